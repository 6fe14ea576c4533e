"""Any timm backbone behind the same config, heads, stages, caching and remote code (issue 15).

Five families at 32 px with random weights (timm `pretrained=False`, nothing touches the network). Each model is built
once per session; the remote-code check runs one subprocess for all five.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file
from transformers.image_utils import PILImageResampling

from hftransfer import TransferConfig, TransferForImageClassification, TransferImageProcessor, TransferModel
from hftransfer.weights import create_model

SIZE = 32
# name -> (timm.create_model kwargs, timm keys the backbone does not hold, backbone-relative prefixes of the last two
# stages). The missing keys are the classifier plus what timm's own `prune_intermediate_layers` drops because no stage
# output uses it (a final norm, EfficientNet's 1x1 head conv).
FAMILIES = {
    "resnet18": ({}, {"fc.weight", "fc.bias"}, ("layer3.", "layer4.")),
    "convnext_atto": (
        {},
        {"head.fc.weight", "head.fc.bias", "head.norm.weight", "head.norm.bias"},
        ("stages.2.", "stages.3."),
    ),
    "efficientnet_b0": (
        {},
        {"classifier.weight", "classifier.bias", "conv_head.weight"}
        | {f"bn2.{k}" for k in ("weight", "bias", "running_mean", "running_var")},
        ("blocks.3.", "blocks.4.", "blocks.5.", "blocks.6."),
    ),
    "regnety_002": ({}, {"head.fc.weight", "head.fc.bias"}, ("s3.", "s4.")),
    "vit_tiny_patch16_224": (
        {"img_size": SIZE},
        {"head.weight", "head.bias", "norm.weight", "norm.bias"},
        tuple(f"blocks.{i}." for i in range(6, 12)),
    ),
}
NAMES = list(FAMILIES)
BATCHNORM_FAMILIES = ["resnet18", "efficientnet_b0", "regnety_002"]


def config_for(name: str, **overrides) -> TransferConfig:
    values = {"backbone": name, "image_size": SIZE, "pooling": "avg", "hidden_sizes": [8], "num_labels": 3}
    values.update(overrides)
    return TransferConfig(**values)


@pytest.fixture(scope="session")
def models():
    """One eval-mode classifier per family, built lazily and shared by the tests that do not modify it."""
    built = {}

    def get(name: str) -> TransferForImageClassification:
        if name not in built:
            torch.manual_seed(0)
            built[name] = TransferForImageClassification(config_for(name)).eval()
        return built[name]

    return get


@pytest.fixture(scope="session")
def pixel_values():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def timm_reference(name: str) -> torch.nn.Module:
    kwargs, _, _ = FAMILIES[name]
    return timm.create_model(name, pretrained=False, **kwargs).eval()


@pytest.mark.parametrize("name", NAMES)
def test_stages_follow_timm_feature_info_and_weights_load_into_timm(name, models, pixel_values):
    model = models(name)
    reference = timm_reference(name)
    info = reference.feature_info
    if name.startswith("vit"):  # every block has stride 16: four evenly spaced blocks (3, 6, 9, 12 of 12)
        indices = [2, 5, 8, 11]
    else:  # one stage per reduction step
        indices = list(range(len(info)))
    expected = [(info[i]["num_chs"], info[i]["reduction"], info[i]["module"]) for i in indices]
    assert [(f["num_chs"], f["reduction"], f["module"]) for f in model.backbone.feature_info] == expected
    assert model.backbone.num_stages == model.config.num_backbone_stages == len(indices)

    # The backbone is the timm model without its classifier, with plain timm keys.
    _, dropped, _ = FAMILIES[name]
    missing, unexpected = reference.load_state_dict(model.backbone.state_dict(), strict=False)
    assert unexpected == [] and set(missing) == dropped
    assert all(k.startswith("backbone.") for k, _ in model.named_parameters() if not k.startswith("head."))

    with torch.no_grad():
        stages = model.backbone.forward_intermediates(pixel_values, intermediates_only=True)
        timm_stages = reference.forward_intermediates(
            pixel_values, indices=indices, intermediates_only=True, **({"output_fmt": "NCHW"} if "vit" in name else {})
        )
        logits = model(pixel_values).logits
    assert [tuple(s.shape) for s in stages] == [(2, c, SIZE // r, SIZE // r) for c, r, _ in expected]
    for ours, theirs in zip(stages, timm_stages, strict=True):
        torch.testing.assert_close(ours, theirs)
    assert logits.shape == (2, 3)
    assert model.pooler.output_size == expected[-1][0]


@pytest.mark.parametrize("name", NAMES)
def test_freezing_by_stage_trains_exactly_the_expected_parameters(name):
    model = TransferForImageClassification(config_for(name))
    backbone_names = [n for n, _ in model.named_parameters() if n.startswith("backbone.")]
    model.freeze_backbone()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        n for n, _ in model.named_parameters() if n.startswith("head.")
    ]
    assert model.trainable_backbone_stages == []

    _, _, last_two = FAMILIES[name]
    model.unfreeze_backbone(last_k_blocks=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")}
    assert trainable == {n for n in backbone_names if n.removeprefix("backbone.").startswith(last_two)}
    num_stages = model.backbone.num_stages
    assert model.trainable_backbone_stages == [num_stages - 2, num_stages - 1]

    # The stem belongs to stage 0, and group_matcher puts every parameter in the group of its stage.
    assert model.backbone_stage_of(backbone_names[0]) == 0
    assert model.backbone_stage_of("head.classifier.weight") is None
    import re

    blocks = model.group_matcher()["blocks"]
    assert len(blocks) == num_stages + 1
    for parameter in backbone_names:
        groups = [ordinal[0] for pattern, ordinal in blocks[:-1] if re.match(pattern, parameter)]
        assert groups == [model.backbone_stage_of(parameter)], parameter

    model.unfreeze_backbone()
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match=rf"last_k_blocks={num_stages + 1} is invalid: expected None or an integer"):
        model.unfreeze_backbone(last_k_blocks=num_stages + 1)


@pytest.mark.parametrize("name", BATCHNORM_FAMILIES)
def test_frozen_batchnorm_stays_in_eval_mode(name, pixel_values):
    model = TransferForImageClassification(config_for(name))
    model.unfreeze_backbone(last_k_blocks=1)
    model.train()
    norms = [
        (model.backbone_stage_of(f"backbone.{n}.weight"), m)
        for n, m in model.backbone.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    last = model.backbone.num_stages - 1
    assert {stage for stage, _ in norms} >= {0, last}
    assert all(m.training == (stage == last) for stage, m in norms)
    frozen = next(m for stage, m in norms if stage == 0)
    before = frozen.running_mean.clone()
    model(pixel_values, labels=torch.tensor([0, 1])).loss.backward()
    torch.testing.assert_close(frozen.running_mean, before)
    assert model.backbone.training and model.head.training


@pytest.mark.parametrize("name", NAMES)
def test_fusion_head_pools_the_chosen_stages(name, pixel_values):
    model = TransferForImageClassification(config_for(name, head="fusion", fusion_stages=[0, 2])).eval()
    channels = model.backbone.stage_channels
    assert model.pooler.output_size == channels[0] + channels[2]
    with torch.no_grad():
        stages = model.backbone.forward_intermediates(pixel_values, intermediates_only=True)
        expected = torch.cat([stages[0].mean((2, 3)), stages[2].mean((2, 3))], dim=1)
        torch.testing.assert_close(model.forward_features(pixel_values), expected)
    # The default fusion stages are the last three of this backbone.
    num_stages = model.backbone.num_stages
    assert config_for(name, head="fusion").fusion_stages == list(range(num_stages - 3, num_stages))
    with pytest.raises(
        ValueError, match=rf"stage indices in 0\.\.{num_stages - 1} \({name} has {num_stages} stages\)"
    ):
        config_for(name, head="fusion", fusion_stages=[num_stages])


@pytest.mark.parametrize("name", NAMES)
def test_cached_features_give_the_same_logits_and_flatten_sizes_from_the_reduction(name, models, pixel_values):
    model = models(name)
    with torch.no_grad():
        direct = model(pixel_values, labels=torch.tensor([0, 2]))
        cached = model(pooled_features=model.forward_features(pixel_values), labels=torch.tensor([0, 2]))
    torch.testing.assert_close(cached.logits, direct.logits)
    torch.testing.assert_close(cached.loss, direct.loss)

    flatten = TransferForImageClassification(config_for(name, pooling="flatten", image_size=64)).eval()
    side = 64 // flatten.backbone.stage_reductions[-1]
    assert flatten.pooler.output_size == flatten.backbone.stage_channels[-1] * side * side
    assert flatten.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, flatten.pooler.output_size)

    headless = TransferModel(config_for(name)).eval()
    output = headless(pixel_values, output_hidden_states=True)
    assert len(output.hidden_states) == headless.backbone.num_stages
    assert output.last_hidden_state.shape == output.hidden_states[-1].shape


def test_config_and_processor_follow_timm_pretrained_cfg():
    vit = config_for("vit_tiny_patch16_224")
    assert vit.image_mean == [0.5, 0.5, 0.5] and vit.image_std == [0.5, 0.5, 0.5]
    processor = TransferImageProcessor.from_transfer_config(
        config_for("resnet50", backbone_weights="timm/resnet50.a1_in1k"), resize_mode="crop"
    )
    assert processor.resample == PILImageResampling.BICUBIC  # timm's interpolation for resnet50.a1_in1k
    assert processor.size == {"shortest_edge": round(SIZE / 0.95)}  # its crop_pct
    vgg = TransferImageProcessor.from_transfer_config(TransferConfig(image_size=SIZE), resize_mode="crop")
    assert vgg.resample == PILImageResampling.BILINEAR and vgg.size == {"shortest_edge": round(SIZE / 0.875)}
    with pytest.raises(ValueError, match=r"a multiple of 32 \(the last stage of resnet18 has stride 32\)"):
        config_for("resnet18", image_size=48)
    assert config_for("vit_tiny_patch16_224", image_size=48).image_size == 48  # stride 16


def test_unknown_and_unusable_backbones_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"backbone='convnext_tinyy' is invalid: .*close matches: convnext_tiny"):
        TransferConfig(backbone="convnext_tinyy")
    with pytest.raises(ValueError, match=r"backbone='resnet50' with backbone_weights='timm/resnet50\.a1_in1k'"):
        TransferConfig(backbone="resnet50.a1_in1k")

    from hftransfer import configuration_hftransfer

    class NoFeaturePath(torch.nn.Module):  # a classifier timm can build but without forward_intermediates
        def __init__(self, **kwargs):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

    real_is_model = timm.is_model
    monkeypatch.setattr(timm, "is_model", lambda name: name == "resnet18_nofeatures" or real_is_model(name))
    monkeypatch.setattr(timm, "create_model", lambda name, **kwargs: NoFeaturePath())
    configuration_hftransfer._build_spec.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"NoFeaturePath has no such feature path\); close matches that have one"):
            TransferConfig(backbone="resnet18_nofeatures")
    finally:
        configuration_hftransfer._build_spec.cache_clear()


def test_fixed_input_size_and_recipe_stage_count_are_checked():
    vit = TransferForImageClassification(config_for("vit_tiny_patch16_224"))
    with pytest.raises(
        ValueError, match="'vit_tiny_patch16_224' \\(position embeddings\\) fixes the input size to 32x32"
    ):
        vit(torch.randn(1, 3, 64, 64))

    from hftransfer.recipes import RecipeError, recipe_from_dict

    stages = [{"name": "ft", "trainable": "last_k", "last_k_blocks": 5}]
    with pytest.raises(RecipeError, match=r"last_k_blocks=5 is invalid: expected 1\.\.4 with last_k \(convnext_atto"):
        recipe_from_dict({"model": {"backbone": "convnext_atto"}, "stages": stages})
    assert recipe_from_dict({"model": {"backbone": "resnet18"}, "stages": stages}).stages[0].last_k_blocks == 5


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_local_timm_weights_files_load_for_any_backbone(name, tmp_path, pixel_values):
    torch.manual_seed(3)
    reference = timm.create_model(name, pretrained=False).eval()  # ViT: 224 px position embeddings
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, tmp_path / "weights.safetensors")
    torch.save(state, tmp_path / "weights.pth")
    for source in (tmp_path / "weights.safetensors", tmp_path / "weights.pth"):
        model = create_model(source, backbone=name, image_size=SIZE, pooling="avg", hidden_sizes=[8], num_labels=3)
        assert model.config.backbone_weights == source.name
        assert model.config.image_mean == list(reference.pretrained_cfg["mean"])
        loaded = model.backbone.state_dict()
        for key, value in loaded.items():
            if key != "pos_embed":
                torch.testing.assert_close(value, state[key])
    if name.startswith("vit"):  # resampled to the 2x2 grid of 32 px inputs, as timm resamples on load
        from timm.layers import resample_abs_pos_embed

        expected = resample_abs_pos_embed(state["pos_embed"], new_size=(2, 2), num_prefix_tokens=1)
        torch.testing.assert_close(loaded["pos_embed"], expected)
    else:
        with torch.no_grad():
            torch.testing.assert_close(
                model.backbone.forward_features(pixel_values), reference.forward_features(pixel_values)
            )


def test_hub_weights_fail_fast_offline(monkeypatch):
    from hftransfer.weights import HubWeightsUnavailableError, load_backbone_weights

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubWeightsUnavailableError, match=r"'hf-hub:timm/resnet50\.a1_in1k'.*offline mode is on"):
        load_backbone_weights("timm/resnet50.a1_in1k", backbone="resnet50")
    with pytest.raises(HubWeightsUnavailableError, match=r"'hf-hub:timm/convnext_atto\.d2_in1k'"):
        load_backbone_weights("convnext_atto.d2_in1k", backbone="convnext_atto")


@pytest.fixture(scope="session")
def saved_models(models, pixel_values, tmp_path_factory):
    """Each family saved with `save_pretrained`, with its logits on `pixel_values`."""
    root = tmp_path_factory.mktemp("backbones")
    saved = {}
    for name in NAMES:
        model = models(name)
        model.save_pretrained(root / name)
        with torch.no_grad():
            saved[name] = (root / name, model(pixel_values).logits)
    return saved


@pytest.mark.parametrize("name", NAMES)
def test_save_and_reload_gives_identical_logits(name, saved_models, pixel_values):
    folder, expected = saved_models[name]
    loaded = TransferForImageClassification.from_pretrained(folder).eval()
    assert loaded.config.backbone == name
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, expected, atol=0, rtol=0)


def test_remote_code_loads_every_family_without_hftransfer(saved_models, pixel_values, tmp_path):
    """One subprocess in which `import hftransfer` fails loads all five saved models through trust_remote_code."""
    torch.save(pixel_values, tmp_path / "pixels.pt")
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "hftransfer.py").write_text("raise ImportError('hftransfer is not installed here')\n")
    folders = {name: str(folder) for name, (folder, _) in saved_models.items()}
    script = textwrap.dedent(
        f"""
        import json, torch
        try:
            import hftransfer
            raise SystemExit("hftransfer should not be importable")
        except ImportError:
            pass
        from transformers import AutoImageProcessor, AutoModelForImageClassification
        pixels = torch.load({str(tmp_path / "pixels.pt")!r})
        result = {{}}
        for name, folder in {folders!r}.items():
            model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
            processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
            with torch.no_grad():
                logits = model(pixels).logits
            result[name] = {{"logits": logits.tolist(), "module": type(model).__module__,
                             "processor": type(processor).__name__}}
        print(json.dumps(result))
        """
    )
    env = {"PYTHONPATH": str(blocker), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    env.update({k: v for k, v in os.environ.items() if k.startswith(("HF_", "OMP_")) and k != "HF_HUB_OFFLINE"})
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert set(result) == set(NAMES)
    for name, (_, expected) in saved_models.items():
        assert result[name]["module"].startswith("transformers_modules")
        assert result[name]["processor"] == "TransferImageProcessor"
        torch.testing.assert_close(torch.tensor(result[name]["logits"]), expected, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_hftransfer_train_runs_on_each_family(name, tmp_path, session_dir):
    """`hftransfer train` end to end per family (random weights, 32 px): cached frozen stage, then the last stage."""
    from hftransfer.cli import main

    output_dir = tmp_path / "run"
    recipe = {
        "name": f"{name}-tiny",
        "model": {
            "backbone": name,
            "backbone_weights": "random",
            "image_size": SIZE,
            "pooling": "avg",
            "hidden_sizes": [16],
        },
        "data": {"dataset": "fashion-mnist-subset", "max_train_samples": 48, "max_eval_samples": 16},
        "stages": [
            {"name": "frozen", "epochs": 1, "learning_rate": 0.003, "trainable": "head"},
            {"name": "finetune", "max_steps": 2, "learning_rate": 0.001, "trainable": "last_k", "last_k_blocks": 1},
        ],
        "training": {
            "output_dir": str(output_dir),
            "per_device_train_batch_size": 16,
            "per_device_eval_batch_size": 16,
            "dataloader_num_workers": 0,
            "feature_cache_dir": str(session_dir / "feature_cache_backbones"),
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["train", str(path)]) == 0

    config = json.loads((output_dir / "config.json").read_text())
    assert config["backbone"] == name and config["backbone_weights"] == "random"
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert [stage["name"] for stage in metrics["stages"]] == ["frozen", "finetune"]
    assert metrics["stages"][0]["used_feature_cache"] is True
    assert 0.0 <= metrics["final"]["test"]["accuracy"] <= 1.0
    assert any((session_dir / "feature_cache_backbones").rglob("*.safetensors"))  # the frozen stage cached features
    assert (output_dir / "README.md").is_file() and (output_dir / "modeling_hftransfer.py").is_file()
    model = TransferForImageClassification.from_pretrained(output_dir)
    assert model.config.backbone == name
    assert model.backbone.num_stages == config_for(name).num_backbone_stages


def test_resnet50_recipe_names_hub_weights_and_validates():
    from hftransfer.configuration_hftransfer import backbone_spec
    from hftransfer.recipes import load_recipe

    recipe = load_recipe("resnet50-finetune")
    assert (recipe.model.backbone, recipe.model.backbone_weights) == ("resnet50", "timm/resnet50.a1_in1k")
    assert recipe.stages[1].last_k_blocks == 2 and backbone_spec("resnet50").num_stages == 5
    assert TransferConfig(backbone="resnet50", image_size=recipe.model.image_size).image_size == 224
