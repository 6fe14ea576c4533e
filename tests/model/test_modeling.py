"""ModelTesterMixin-style tests of the hftransfer model classes (small images, random weights)."""

import subprocess
import sys
import textwrap

import pytest
import timm
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from hftransfer import TransferConfig, TransferForImageClassification, TransferImageProcessor, TransferModel


def tiny_config(**overrides) -> TransferConfig:
    values = {"image_size": 32, "pooling": "avg", "hidden_sizes": [16], "num_labels": 3}
    values.update(overrides)
    return TransferConfig(**values)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_keras_classic_parameter_parity():
    # VGG16 include_top=False (224 px) -> Flatten -> Dense(1024, relu) -> Dense(10): Keras reports 40,416,074.
    model = TransferForImageClassification(
        TransferConfig(head="classification", pooling="flatten", hidden_sizes=[1024], image_size=224, num_labels=10)
    )
    assert count(model) == 40_416_074
    assert count(model.backbone) == 14_714_688
    assert count(model.head) == 25_088 * 1024 + 1024 + 1024 * 10 + 10


def test_fusion_parameter_count():
    config = TransferConfig(
        head="fusion",
        pooling="avg",
        fusion_stages=[2, 3, 4],
        extra_features_dim=4,
        image_size=224,
        hidden_sizes=[512],
        num_labels=10,
    )
    model = TransferForImageClassification(config)
    fused = 256 + 512 + 512 + 4
    assert model.pooler.output_size == 256 + 512 + 512
    assert count(model.head) == fused * 512 + 512 + 512 * 10 + 10
    assert count(model) == 14_714_688 + count(model.head)


@pytest.mark.parametrize(("pooling", "width"), [("flatten", 512), ("avg", 512), ("max", 512), ("avgmax", 512)])
def test_classification_head_shapes(pooling, width):
    model = TransferForImageClassification(tiny_config(pooling=pooling)).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    assert model.forward_features(pixel_values).shape == (2, width)  # 32 px -> 1x1x512 after five pools
    output = model(pixel_values)
    assert output.logits.shape == (2, 3) and output.loss is None


def test_pooling_matches_its_definition():
    model = TransferForImageClassification(tiny_config(image_size=64, pooling="avgmax")).eval()
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feature_map = model.backbone.forward_features(pixel_values)  # (2, 512, 2, 2)
        expected = 0.5 * (feature_map.mean((2, 3)) + feature_map.amax((2, 3)))
        torch.testing.assert_close(model.forward_features(pixel_values), expected)


def test_flatten_rejects_other_sizes_but_global_pooling_accepts_them():
    flatten = TransferForImageClassification(tiny_config(pooling="flatten"))
    with pytest.raises(ValueError, match="fixes the input size to 32x32"):
        flatten(torch.randn(1, 3, 64, 64))
    avg = TransferForImageClassification(tiny_config(pooling="avg"))
    assert avg(torch.randn(1, 3, 64, 64)).logits.shape == (1, 3)


def test_bad_pixel_values_are_clear_errors():
    model = TransferForImageClassification(tiny_config())
    with pytest.raises(ValueError, match=r"expected \(batch_size, 3, height, width\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="pixel_values"):
        model()


def test_fusion_head_concatenates_stage_pools_and_extra_features():
    config = tiny_config(head="fusion", fusion_stages=[0, 4], extra_features_dim=2, image_size=64)
    model = TransferForImageClassification(config).eval()
    pixel_values, extra = torch.randn(2, 3, 64, 64), torch.randn(2, 2)
    with torch.no_grad():
        stages = model.backbone.forward_stages(pixel_values)
        expected = torch.cat([stages[0].mean((2, 3)), stages[4].mean((2, 3))], dim=1)
        torch.testing.assert_close(model.forward_features(pixel_values), expected)
        logits = model(pixel_values, extra_features=extra).logits
        manual = model.head.classifier(model.head.hidden(torch.cat([expected, extra], dim=1)))
        torch.testing.assert_close(logits, manual)
        # The extra features matter.
        assert not torch.allclose(logits, model(pixel_values, extra_features=extra + 1).logits)


def test_fusion_extra_features_errors():
    model = TransferForImageClassification(tiny_config(head="fusion", extra_features_dim=2))
    pixel_values = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"expects `extra_features` of shape \(batch_size, 2\)"):
        model(pixel_values)
    with pytest.raises(ValueError, match=r"has shape \(2, 3\), expected \(2, 2\)"):
        model(pixel_values, extra_features=torch.randn(2, 3))
    plain = TransferForImageClassification(tiny_config())
    with pytest.raises(ValueError, match="extra_features_dim is 0"):
        plain(pixel_values, extra_features=torch.randn(2, 2))


def test_pooled_features_path_equals_pixel_path():
    model = TransferForImageClassification(tiny_config()).eval()
    pixel_values = torch.randn(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        direct = model(pixel_values, labels=labels)
        cached = model(pooled_features=model.forward_features(pixel_values), labels=labels)
    torch.testing.assert_close(direct.logits, cached.logits)
    torch.testing.assert_close(direct.loss, cached.loss)


def test_loss_follows_problem_type():
    pixel_values = torch.randn(3, 3, 32, 32)
    single = TransferForImageClassification(tiny_config()).eval()
    labels = torch.tensor([0, 2, 1])
    out = single(pixel_values, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))

    multi = TransferForImageClassification(tiny_config(problem_type="multi_label_classification")).eval()
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    out = multi(pixel_values, labels=targets)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets))

    regression = TransferForImageClassification(tiny_config(num_labels=1)).eval()
    values = torch.tensor([0.5, -1.0, 2.0])
    out = regression(pixel_values, labels=values)
    assert regression.config.problem_type == "regression"
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(), values))


def test_return_dict_false_gives_tuples():
    model = TransferForImageClassification(tiny_config()).eval()
    loss, logits = model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]), return_dict=False)
    assert loss.ndim == 0 and logits.shape == (2, 3)


def test_headless_model_outputs():
    model = TransferModel(tiny_config(image_size=64, pooling="max")).eval()
    output = model(torch.randn(2, 3, 64, 64), output_hidden_states=True)
    assert output.last_hidden_state.shape == (2, 512, 2, 2)
    assert output.pooler_output.shape == (2, 512)
    assert [tuple(h.shape[1:]) for h in output.hidden_states] == [
        (64, 32, 32),
        (128, 16, 16),
        (256, 8, 8),
        (512, 4, 4),
        (512, 2, 2),
    ]
    torch.testing.assert_close(output.pooler_output, output.last_hidden_state.amax((2, 3)))


@pytest.mark.parametrize("backbone", ["vgg11", "vgg13_bn", "vgg19"])
def test_stage_split_matches_timm_feature_info(backbone):
    model = TransferForImageClassification(tiny_config(backbone=backbone))
    reference = timm.create_model(backbone, pretrained=False)
    assert model.backbone.stage_channels == [info["num_chs"] for info in reference.feature_info[:5]]
    assert sum(e - s for s, e in model.backbone.stage_slices) == len(reference.features)


def test_freeze_and_unfreeze_at_stage_granularity():
    model = TransferForImageClassification(tiny_config())
    model.freeze_backbone()
    assert model.trainable_backbone_stages == []
    assert all(p.requires_grad for p in model.head.parameters())
    model.unfreeze_backbone(last_k_blocks=2)
    assert model.trainable_backbone_stages == [3, 4]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")}
    assert trainable == {f"backbone.features.{i}.{w}" for i in (17, 19, 21, 24, 26, 28) for w in ("weight", "bias")}
    model.unfreeze_backbone()
    assert model.trainable_backbone_stages == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="last_k_blocks=6 is invalid"):
        model.unfreeze_backbone(last_k_blocks=6)


def test_frozen_batchnorm_stays_in_eval_mode_while_training():
    model = TransferForImageClassification(tiny_config(backbone="vgg16_bn"))
    model.unfreeze_backbone(last_k_blocks=1)
    model.train()
    norms = [
        (model.backbone.stage_of_layer(i), m)
        for i, m in enumerate(model.backbone.features)
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    assert all(m.training == (stage == 4) for stage, m in norms)
    frozen_bn = norms[0][1]
    before = frozen_bn.running_mean.clone()
    model(torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    torch.testing.assert_close(frozen_bn.running_mean, before)  # frozen statistics did not move
    assert model.head.training


def test_group_matcher_and_stage_lookup():
    model = TransferForImageClassification(tiny_config())
    assert model.backbone_stage_of("backbone.features.0.weight") == 0
    assert model.backbone_stage_of("backbone.features.28.bias") == 4
    assert model.backbone_stage_of("head.classifier.weight") is None
    blocks = model.group_matcher()["blocks"]
    assert len(blocks) == 6 and blocks[-1][1] == (5,)


def test_save_and_reload_gives_identical_logits(tmp_path):
    model = TransferForImageClassification(
        tiny_config(id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    ).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    model.save_pretrained(tmp_path)
    for loaded in (
        TransferForImageClassification.from_pretrained(tmp_path),
        AutoModelForImageClassification.from_pretrained(tmp_path),
    ):
        assert type(loaded) is TransferForImageClassification
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(pixel_values).logits, model(pixel_values).logits)
    assert type(AutoModel.from_pretrained(tmp_path)) is TransferModel
    assert type(AutoConfig.from_pretrained(tmp_path)) is TransferConfig


def test_checkpoint_backbone_loads_into_timm_unchanged(tmp_path):
    from safetensors.torch import load_file

    model = TransferForImageClassification(tiny_config())
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    backbone = {k.removeprefix("backbone."): v for k, v in saved.items() if k.startswith("backbone.")}
    assert all(k.startswith("features.") for k in backbone)
    reference = timm.create_model("vgg16", pretrained=False)
    reference.features.load_state_dict({k.removeprefix("features."): v for k, v in backbone.items()}, strict=True)
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            reference.eval().forward_features(pixel_values), model.eval().backbone.forward_features(pixel_values)
        )


def test_remote_code_loads_without_hftransfer(tmp_path):
    """A saved model works through trust_remote_code in a process where `import hftransfer` fails."""
    import PIL.Image

    config = tiny_config(
        image_size=64, id2label={0: "cat", 1: "dog", 2: "bird"}, label2id={"cat": 0, "dog": 1, "bird": 2}
    )
    model = TransferForImageClassification(config).eval()
    processor = TransferImageProcessor.from_transfer_config(config)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    assert {"configuration_hftransfer.py", "modeling_hftransfer.py", "image_processing_hftransfer.py"} <= {
        p.name for p in model_dir.iterdir()
    }
    image_path = tmp_path / "image.png"
    PIL.Image.linear_gradient("L").resize((80, 60)).convert("RGB").save(image_path)
    with torch.no_grad():
        expected = model(**processor(PIL.Image.open(image_path), return_tensors="pt")).logits
    expected_pipeline_top = config.id2label[int(expected.argmax())]

    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "hftransfer.py").write_text("raise ImportError('hftransfer is not installed here')\n")
    script = textwrap.dedent(
        f"""
        import json, torch, PIL.Image
        try:
            import hftransfer
            raise SystemExit("hftransfer should not be importable")
        except ImportError:
            pass
        from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
        model = AutoModelForImageClassification.from_pretrained({str(model_dir)!r}, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained({str(model_dir)!r}, trust_remote_code=True)
        with torch.no_grad():
            logits = model(**processor(PIL.Image.open({str(image_path)!r}), return_tensors="pt")).logits
        classifier = pipeline("image-classification", model={str(model_dir)!r}, trust_remote_code=True)
        result = classifier({str(image_path)!r}, top_k=3)
        print(json.dumps({{"logits": logits.tolist(), "pipeline": result, "module": type(model).__module__}}))
        """
    )
    env = {"PYTHONPATH": str(blocker), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    import os

    env.update({k: v for k, v in os.environ.items() if k.startswith("HF_") and k != "HF_HUB_OFFLINE"})
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    import json

    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["module"].startswith("transformers_modules")
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, atol=1e-5, rtol=0)
    probabilities = expected.softmax(-1)[0]
    assert result["pipeline"][0]["label"] == expected_pipeline_top
    for entry in result["pipeline"]:
        label_id = config.label2id[entry["label"]]
        assert abs(entry["score"] - float(probabilities[label_id])) < 1e-5
