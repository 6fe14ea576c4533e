"""hftransfer as a citizen of transformers (issue 11): re-fine-tuning a saved model on new labels with a plain
`Trainer`, processors that match the weights, and `pipeline` without a trust prompt.

Small and fast: vgg11 with random weights at 32 px (these tests are about plumbing, not transfer quality).
"""

import json
import os
import pty
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

import hftransfer
from hftransfer import TransferConfig, TransferForImageClassification, TransferImageProcessor

NEW_CLASSES = ("ant", "bee", "cat", "dog", "eel")
IMAGES_PER_CLASS = 2


def save_ten_class_model(model_dir: Path) -> TransferForImageClassification:
    config = TransferConfig(
        backbone="vgg11",
        image_size=32,
        pooling="avg",
        hidden_sizes=[16],
        id2label={i: f"old_{i}" for i in range(10)},
        label2id={f"old_{i}": i for i in range(10)},
    )
    model = TransferForImageClassification(config).eval()
    model.save_pretrained(model_dir)
    return model


def make_imagefolder(root: Path) -> Path:
    """Real PNG files in `root/train/<class>/`, 32x32, one colour per class plus noise."""
    rng = np.random.default_rng(0)
    for index, name in enumerate(NEW_CLASSES):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        colour = np.array([50 * index, 255 - 50 * index, 120], dtype=np.int16)
        for k in range(IMAGES_PER_CLASS):
            noise = rng.integers(-20, 20, size=(32, 32, 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            PIL.Image.fromarray(pixels).save(folder / f"{name}_{k}.png")
    return root


def backbone_tensors(state_dict: dict) -> dict:
    return {k: v for k, v in state_dict.items() if k.startswith("backbone.")}


# The whole standard flow, as a script: it runs in this process and, verbatim, in a process without hftransfer.
REFINETUNE_SCRIPT = """
import json, torch, datasets
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments

def refinetune(model_dir, data_dir, output_dir, **load_kwargs):
    data = datasets.load_dataset("imagefolder", data_dir=data_dir)
    names = data["train"].features["label"].names
    model = AutoModelForImageClassification.from_pretrained(
        model_dir, num_labels=len(names), ignore_mismatched_sizes=True, **load_kwargs
    )
    processor = AutoImageProcessor.from_pretrained(model_dir, **load_kwargs)
    saved = load_file(f"{model_dir}/model.safetensors")
    loaded = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = model.eval()(torch.zeros(2, 3, 32, 32)).logits

    def transform(batch):
        return {"pixel_values": processor(batch["image"], return_tensors="pt")["pixel_values"], "label": batch["label"]}

    def collate(rows):
        return {
            "pixel_values": torch.stack([r["pixel_values"] for r in rows]),
            "labels": torch.tensor([r["label"] for r in rows]),
        }

    args = TrainingArguments(
        output_dir=output_dir, num_train_epochs=1, per_device_train_batch_size=5, learning_rate=1e-3,
        save_strategy="no", report_to="none", use_cpu=True, remove_unused_columns=False, logging_steps=1,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data["train"].with_transform(transform),
                      data_collator=collate)
    train_output = trainer.train()
    trained = model.state_dict()
    backbone = [k for k in saved if k.startswith("backbone.")]
    return {
        "module": type(model).__module__,
        "num_labels": model.config.num_labels,
        "id2label": {str(k): v for k, v in model.config.id2label.items()},
        "logits_shape": list(logits.shape),
        "backbone_keys": len(backbone),
        "backbone_identical": all(torch.equal(loaded[k], saved[k]) for k in backbone),
        "hidden_identical": torch.equal(loaded["head.hidden.0.weight"], saved["head.hidden.0.weight"]),
        "classifier_shape": list(loaded["head.classifier.weight"].shape),
        "classifier_std": float(loaded["head.classifier.weight"].std()),
        "classifier_matches_old_rows": torch.allclose(
            loaded["head.classifier.weight"], saved["head.classifier.weight"][: len(names)]
        ),
        "global_step": trainer.state.global_step,
        "epoch": trainer.state.epoch,
        "train_loss": train_output.training_loss,
        "classifier_trained": not torch.equal(trained["head.classifier.weight"], loaded["head.classifier.weight"]),
        "num_examples": len(data["train"]),
    }
"""


def check_refinetune_report(report: dict, initializer_range: float) -> None:
    assert report["num_labels"] == 5 and report["logits_shape"] == [2, 5]
    assert report["id2label"] == {str(i): f"LABEL_{i}" for i in range(5)}  # transformers' rebuilt names
    assert report["backbone_keys"] == 16 and report["backbone_identical"]  # vgg11: 8 convs, weight + bias
    assert report["hidden_identical"]  # same-shaped head layers keep the checkpoint's weights
    # The classifier is new: 5 rows, drawn again from the init distribution (not a slice of the old 10 rows).
    assert report["classifier_shape"] == [5, 16] and not report["classifier_matches_old_rows"]
    assert 0.5 * initializer_range < report["classifier_std"] < 2 * initializer_range
    # One epoch with a plain Trainer: 10 images at batch size 5.
    assert report["num_examples"] == len(NEW_CLASSES) * IMAGES_PER_CLASS
    assert report["global_step"] == 2 and report["epoch"] == pytest.approx(1.0)
    assert np.isfinite(report["train_loss"]) and report["classifier_trained"]


def test_refinetune_saved_model_on_new_labels_in_package(tmp_path):
    model_dir = tmp_path / "ten-classes"
    original = save_ten_class_model(model_dir)
    data_dir = make_imagefolder(tmp_path / "data")
    namespace: dict = {}
    exec(REFINETUNE_SCRIPT, namespace)
    report = namespace["refinetune"](str(model_dir), str(data_dir), str(tmp_path / "run"))
    assert report["module"] == "hftransfer.modeling_hftransfer"
    check_refinetune_report(report, original.config.initializer_range)


def test_refinetune_with_new_label_names_the_official_example_way(tmp_path):
    # transformers' run_image_classification.py passes num_labels, id2label and label2id together.
    model_dir = tmp_path / "ten-classes"
    original = save_ten_class_model(model_dir)
    id2label = dict(enumerate(NEW_CLASSES))
    model = AutoModelForImageClassification.from_pretrained(
        model_dir,
        num_labels=5,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        ignore_mismatched_sizes=True,
    )
    assert model.config.id2label == id2label and model.config.label2id["eel"] == 4
    assert model(torch.zeros(1, 3, 32, 32)).logits.shape == (1, 5)
    for key, value in backbone_tensors(original.state_dict()).items():
        assert torch.equal(model.state_dict()[key], value), key
    model.save_pretrained(tmp_path / "five-classes")
    assert AutoModelForImageClassification.from_pretrained(tmp_path / "five-classes").config.id2label == id2label


def test_refinetune_saved_model_on_new_labels_via_remote_code_without_hftransfer(tmp_path):
    model_dir = tmp_path / "ten-classes"
    original = save_ten_class_model(model_dir)
    data_dir = make_imagefolder(tmp_path / "data")
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "hftransfer.py").write_text("raise ImportError('hftransfer is not installed here')\n")
    script = REFINETUNE_SCRIPT + textwrap.dedent(
        f"""
        try:
            import hftransfer
            raise SystemExit("hftransfer should not be importable")
        except ImportError:
            pass
        report = refinetune({str(model_dir)!r}, {str(data_dir)!r}, {str(tmp_path / "run")!r}, trust_remote_code=True)
        print("REPORT " + json.dumps(report))
        """
    )
    env = {"PYTHONPATH": str(blocker), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    env.update({k: v for k, v in os.environ.items() if k.startswith(("HF_", "OMP_")) and k != "HF_HUB_OFFLINE"})
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("REPORT "))
    report = json.loads(line.removeprefix("REPORT "))
    assert report["module"].startswith("transformers_modules")
    check_refinetune_report(report, original.config.initializer_range)


# --- processors that match the weights ----------------------------------------------------------------------------


def test_create_model_and_processor_match_the_keras_weights(tmp_path):
    model, processor = hftransfer.create_model_and_processor(
        "keras-imagenet", num_labels=2, image_size=32, pooling="avg", hidden_sizes=[]
    )
    # Keras' caffe convention in [0, 1] units: RGB mean (123.68, 116.779, 103.939) / 255, std 1/255.
    np.testing.assert_allclose(processor.image_mean, np.array([123.68, 116.779, 103.939]) / 255, rtol=1e-6)
    np.testing.assert_allclose(processor.image_std, [1 / 255] * 3, rtol=1e-6)
    assert processor.output_size == (32, 32)
    assert (
        list(processor.image_mean) == model.config.image_mean and list(processor.image_std) == model.config.image_std
    )
    # The same through create_model(return_processor=True).
    model2, processor2 = hftransfer.create_model(
        "keras-imagenet", num_labels=2, image_size=32, pooling="avg", hidden_sizes=[], return_processor=True
    )
    assert processor2.to_dict() == processor.to_dict()
    assert isinstance(hftransfer.create_model("keras-imagenet", image_size=32, pooling="avg"), torch.nn.Module)
    # A mid-grey pixel (128) normalises to 128 - mean*255, as Keras' preprocess_input does.
    grey = PIL.Image.new("RGB", (40, 40), (128, 128, 128))
    pixel_values = processor(grey, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(
        pixel_values[0, :, 5, 5], torch.tensor([128 - 123.68, 128 - 116.779, 128 - 103.939]), atol=1e-3, rtol=0
    )


def test_saved_model_folder_has_a_processor_that_auto_classes_and_pipeline_load(tmp_path):
    config = TransferConfig(
        backbone="vgg11",
        image_size=64,
        pooling="avg",
        hidden_sizes=[],
        image_mean=[0.2, 0.3, 0.4],
        image_std=[0.5, 0.6, 0.7],
        id2label={0: "left", 1: "right"},
        label2id={"left": 0, "right": 1},
    )
    model = TransferForImageClassification(config).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["size"] == {"height": 64, "width": 64}
    assert saved["image_mean"] == [0.2, 0.3, 0.4] and saved["image_std"] == [0.5, 0.6, 0.7]
    assert saved["auto_map"] == {"AutoImageProcessor": "image_processing_hftransfer.TransferImageProcessor"}
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(processor) is TransferImageProcessor and processor.output_size == (64, 64)

    image = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    with torch.no_grad():
        probabilities = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
    classifier = pipeline("image-classification", model=str(tmp_path))
    result = {entry["label"]: entry["score"] for entry in classifier(image)}
    assert set(result) == {"left", "right"}
    assert result["left"] == pytest.approx(float(probabilities[0]), abs=1e-5)


def test_save_pretrained_keeps_a_processor_already_in_the_folder(tmp_path):
    config = TransferConfig(backbone="vgg11", image_size=64, pooling="avg", hidden_sizes=[])
    cropping = TransferImageProcessor.from_transfer_config(config, resize_mode="crop")
    cropping.save_pretrained(tmp_path)
    TransferForImageClassification(config).save_pretrained(tmp_path)
    reloaded = TransferImageProcessor.from_pretrained(tmp_path)
    assert reloaded.do_center_crop and reloaded.size["shortest_edge"] == 73


def test_processor_from_a_folder_with_only_config_json_derives_it_from_the_config(tmp_path):
    config = TransferConfig(image_size=96, image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    config.save_pretrained(tmp_path)
    assert not (tmp_path / "preprocessor_config.json").exists()
    processor = TransferImageProcessor.from_pretrained(tmp_path)
    assert processor.output_size == (96, 96)
    assert list(processor.image_mean) == [0.1, 0.2, 0.3] and list(processor.image_std) == [0.4, 0.5, 0.6]
    overridden = TransferImageProcessor.from_pretrained(tmp_path, size={"height": 32, "width": 32})
    assert overridden.output_size == (32, 32) and list(overridden.image_std) == [0.4, 0.5, 0.6]


def test_processor_from_a_folder_of_another_model_type_is_still_an_error(tmp_path):
    from transformers import ResNetConfig

    ResNetConfig().save_pretrained(tmp_path)
    with pytest.raises(OSError, match="preprocessor_config.json"):
        TransferImageProcessor.from_pretrained(tmp_path)


# --- pipeline without a prompt ------------------------------------------------------------------------------------


def run_in_pseudo_terminal(code: str, env: dict, timeout: float = 240) -> tuple[int, str, bool]:
    """Run `python -c code` on a pty (so `input()` prompts as in a terminal); answer N to any [y/N] prompt."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execve(sys.executable, [sys.executable, "-c", code], env)
    output, prompted, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if not prompted and b"[y/N]" in output:
                prompted = True
                os.write(fd, b"N\n")
    finally:
        os.close(fd)
    finished, status = os.waitpid(pid, os.WNOHANG)
    if not finished:
        os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace"), prompted


def test_pipeline_after_import_hftransfer_loads_without_a_prompt(tmp_path):
    config = TransferConfig(backbone="vgg11", image_size=32, pooling="avg", hidden_sizes=[], num_labels=3)
    TransferForImageClassification(config).save_pretrained(tmp_path / "model")
    TransferImageProcessor.from_transfer_config(config).save_pretrained(tmp_path / "model")  # isolate the prompt
    image_path = tmp_path / "image.png"
    PIL.Image.new("RGB", (40, 40), (10, 200, 30)).save(image_path)
    code = textwrap.dedent(
        f"""
        import time
        import hftransfer
        from transformers import pipeline
        start = time.monotonic()
        classifier = pipeline("image-classification", model={str(tmp_path / "model")!r})
        print("LOADED", type(classifier.model).__module__, round(time.monotonic() - start, 1), flush=True)
        print("RESULT", len(classifier({str(image_path)!r}, top_k=3)), flush=True)
        """
    )
    env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "OMP_"))}
    env.update({"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TERM": "dumb"})
    returncode, output, prompted = run_in_pseudo_terminal(code, env)
    assert not prompted and "custom code" not in output, output[-2000:]
    assert returncode == 0, output[-2000:]
    assert "LOADED hftransfer.modeling_hftransfer" in output and "RESULT 3" in output
    seconds = float(output.split("LOADED hftransfer.modeling_hftransfer")[1].split()[0])
    assert seconds < 10  # no 15 s wait for an answer
