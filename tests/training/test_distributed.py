"""Two real ranks (gloo DDP on CPU) through `accelerate launch -m hftransfer train`."""

import json

import pytest
import yaml

pytestmark = pytest.mark.slow


def test_two_process_run_syncs_the_unfrozen_backbone_and_only_rank_zero_writes(
    tmp_path, make_recipe, feature_cache_dir, two_ranks
):
    recipe = make_recipe(
        tmp_path / "out",
        feature_cache_dir,
        data={"max_train_samples": 128, "max_eval_samples": 32},
        stages=[
            {"name": "frozen", "epochs": 1, "learning_rate": 0.003, "trainable": "head"},
            {
                "name": "finetune",
                "epochs": 1,
                "learning_rate": 0.001,
                "trainable": "last_k",
                "last_k_blocks": 2,
                "backbone_lr_scale": 0.5,
            },
        ],
        training={"per_device_train_batch_size": 16, "save_strategy": "no"},
    )
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    checksums = tmp_path / "checksums"
    completed = two_ranks(recipe_path, {"HFTRANSFER_RANK_CHECKSUM_DIR": str(checksums)})

    reports = {path.stem: json.loads(path.read_text()) for path in checksums.glob("*.json")}
    assert set(reports) == {"frozen-rank0", "frozen-rank1", "finetune-rank0", "finetune-rank1"}
    assert {r["world_size"] for r in reports.values()} == {2}
    frozen, final0, final1 = (reports[k]["checksums"] for k in ("frozen-rank0", "finetune-rank0", "finetune-rank1"))
    # Identical replicas after stage 2...
    assert final0 == final1
    # ...whose unfrozen blocks (4 and 5: features.17..28) really trained, and whose frozen blocks did not.
    changed = {name for name in final0 if final0[name] != frozen[name]}
    assert {n for n in changed if n.startswith("backbone.")} == {
        f"backbone.features.{i}.{w}" for i in (17, 19, 21, 24, 26, 28) for w in ("weight", "bias")
    }
    # Each rank saw half the data: 128 images / (2 ranks x 16) = 4 optimizer steps per epoch.
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["training"]["world_size"] == 2
    assert [s["global_steps"] for s in metrics["stages"]] == [4, 4]
    # Only rank 0 wrote the outputs: one "wrote outputs" line in the combined log of both ranks.
    log = completed.stdout + completed.stderr
    assert log.count("hftransfer: wrote outputs to") == 1
