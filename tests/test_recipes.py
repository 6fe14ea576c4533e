"""Recipes: the shipped YAML files, parsing errors a user can make, command-line overrides and YAML round trips."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from hftransfer import TransferConfig, TransferForImageClassification
from hftransfer.building import transfer_config_kwargs
from hftransfer.recipes import (
    Recipe,
    RecipeError,
    apply_overrides,
    builtin_recipes_dir,
    load_recipe,
    recipe_from_dict,
)

SHIPPED = ("quickstart", "keras-seed", "vgg16-finetune", "fusion", "resnet50-finetune")
# Fashion-MNIST, the data of every shipped recipe.
NUM_LABELS = 10


def model_config(recipe: Recipe, num_labels: int = NUM_LABELS) -> TransferConfig:
    """The `TransferConfig` a recipe's model section describes (what training builds, without the weights)."""
    id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    return TransferConfig(**transfer_config_kwargs(recipe.model, recipe.data, id2label))


def test_every_recipe_file_is_shipped():
    assert sorted(p.stem for p in builtin_recipes_dir().glob("*.yaml")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_loads_and_validates(name):
    recipe = load_recipe(name)
    assert recipe.name == name and recipe.description
    assert recipe.stages and all(stage.name for stage in recipe.stages)
    assert recipe.training.output_dir == f"outputs/{name}"
    assert model_config(recipe).validate() is None  # the model section is a valid TransferConfig
    # Loading by path gives the same recipe as loading by name.
    assert load_recipe(builtin_recipes_dir() / f"{name}.yaml") == recipe


@pytest.mark.parametrize("name", SHIPPED)
def test_to_yaml_round_trips(name):
    recipe = load_recipe(name)
    assert recipe_from_dict(yaml.safe_load(recipe.to_yaml())) == recipe


def test_default_recipe_round_trips():
    assert recipe_from_dict(yaml.safe_load(Recipe().to_yaml())) == Recipe()


def test_quickstart_is_offline_cpu_sized_and_staged():
    recipe = load_recipe("quickstart")
    assert recipe.data.dataset == "fashion-mnist-subset"
    assert recipe.model.backbone_weights == "keras-imagenet"
    assert recipe.model.image_size == 64 and recipe.model.pooling in ("avg", "flatten")
    assert recipe.training.precision == "no"  # bf16 autocast is ~40x slower on CPU
    frozen, finetune = recipe.stages
    assert frozen.trainable == "head" and frozen.cache_features and recipe.data.augmentation == "none"
    assert frozen.augmentation is None  # cached features of the deterministic transform
    assert 5 <= frozen.epochs <= 10 and frozen.learning_rate == 1e-3
    assert finetune.trainable == "last_k" and finetune.last_k_blocks == 1
    assert finetune.learning_rate < frozen.learning_rate
    # Deterministic inputs: the frozen blocks 1-4 run once (stage 1 caches them, stage 2 trains block5 on them).
    assert 1 <= finetune.epochs <= 3 and finetune.augmentation == "none" and finetune.early_stopping_patience
    assert finetune.cache_frozen_prefix == "auto"
    assert recipe.training.model_selection == "best"


def test_keras_seed_is_the_keras_recipe():
    recipe = load_recipe("keras-seed")
    model = recipe.model
    assert (model.image_size, model.pooling, model.hidden_sizes, model.activation, model.dropout) == (
        224,
        "flatten",
        [1024],
        "relu",
        0.0,
    )
    [stage] = recipe.stages
    assert stage.trainable == "head"
    # AdamW without weight decay is Adam; constant LR 1e-3, batch 32, 10 epochs.
    assert (stage.optimizer, stage.weight_decay, stage.learning_rate) == ("adamw_torch", 0.0, 1e-3)
    assert (stage.lr_scheduler_type, stage.warmup_ratio, stage.epochs) == ("constant", 0.0, 10)
    assert recipe.training.per_device_train_batch_size == 32


def test_keras_seed_has_the_keras_parameter_count():
    model = TransferForImageClassification(model_config(load_recipe("keras-seed")))
    assert model.num_parameters() == 40_416_074
    model.freeze_backbone()
    assert model.num_parameters(only_trainable=True) == 25_701_386  # Dense(1024) + Dense(10) on 7*7*512 features


def test_vgg16_finetune_is_gpu_grade():
    recipe = load_recipe("vgg16-finetune")
    assert recipe.model.image_size == 224
    assert recipe.training.precision == "bf16" and recipe.training.channels_last
    frozen, finetune = recipe.stages
    assert frozen.trainable == "head" and frozen.cache_features and recipe.data.augmentation == "none"
    assert finetune.trainable == "all" and finetune.backbone_lr_scale == 0.1 and finetune.augmentation == "light"
    assert finetune.lr_scheduler_type == "cosine" and finetune.warmup_ratio > 0


def test_fusion_recipe_builds_a_fusion_model():
    recipe = load_recipe("fusion")
    assert recipe.model.head == "fusion" and recipe.model.pooling == "avg"
    assert recipe.model.fusion_stages == [2, 3, 4]
    assert recipe.data.extra_feature_columns
    config = model_config(recipe)
    assert config.extra_features_dim == len(recipe.data.extra_feature_columns)
    model = TransferForImageClassification(config)
    assert model.pooler.output_size == 256 + 512 + 512


# --- errors ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"modle": {"image_size": 64}}, "Unknown recipe section 'modle'. Did you mean 'model'?"),
        ({"model": {"imag_size": 64}}, "Unknown key 'model.imag_size' in recipe. Did you mean 'image_size'?"),
        ({"training": {"learning_rate": 1e-3}}, "training.learning_rate is a stage key: set it in each stage"),
        ({"stages": [{"name": "a", "epoch": 2}]}, "Unknown key 'stages[0].epoch' in recipe. Did you mean 'epochs'?"),
        ({"model": {"image_size": "big"}}, "model.image_size='big' is invalid: expected int."),
        ({"model": {"image_size": 64.5}}, "model.image_size=64.5 is invalid: expected int."),
        ({"model": {"hidden_sizes": ["wide"]}}, "model.hidden_sizes=['wide'] is invalid: expected list[int]."),
        ({"training": {"channels_last": "maybe"}}, "training.channels_last='maybe' is invalid: expected bool."),
        ({"model": ["image_size", 64]}, "Recipe section 'model' must be a mapping"),
        ({"stages": {"name": "frozen"}}, "'stages' must be a list of stage mappings"),
        ({"stages": []}, "Recipe has no stages"),
        ({"stages": [{"name": "a"}, {"name": "a"}]}, "Stage names must be unique, got ['a', 'a']."),
        ({"stages": [{"name": "x", "trainable": "some"}]}, "stages[0] (x).trainable='some' is invalid"),
        ({"stages": [{"name": "x", "trainable": "last_k"}]}, "stages[0] (x).last_k_blocks=None is invalid"),
        ({"stages": [{"name": "x", "trainable": "last_k", "last_k_blocks": 6}]}, "expected 1..5 with last_k"),
        ({"stages": [{"name": "x", "epochs": 0}]}, "stages[0] (x): set epochs > 0 or max_steps > 0."),
        ({"stages": [{"name": "x", "learning_rate": -1}]}, "stages[0] (x).learning_rate=-1.0 is invalid"),
        ({"data": {"augmentation": "heavy"}}, "data.augmentation='heavy' is invalid"),
        ({"training": {"precision": "fp8"}}, "training.precision='fp8' is invalid"),
        ({"hub": {"push_to_hub": True}}, "hub.repo_id is not set"),
    ],
)
def test_recipe_errors_name_the_key(data, message):
    with pytest.raises(RecipeError) as error:
        recipe_from_dict(data)
    assert message in str(error.value)


def test_recipe_file_errors(tmp_path):
    with pytest.raises(
        RecipeError, match=r"'quikstart' is neither a file nor a shipped recipe \(fusion, keras-seed, "
    ):
        load_recipe("quikstart")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {image_size: 64\n")
    with pytest.raises(RecipeError, match="is not valid YAML"):
        load_recipe(bad)


def test_recipe_file_that_is_not_a_mapping(tmp_path):
    listing = tmp_path / "list.yaml"
    listing.write_text("- model\n- data\n")
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        load_recipe(listing)


# --- overrides ------------------------------------------------------------------------------------------------------


def test_overrides_by_index_and_by_name():
    recipe = load_recipe(
        "quickstart",
        [
            "--stages.0.epochs",
            "2",
            "--stages.finetune.learning_rate",
            "1e-5",
            "--stages.finetune.last-k-blocks=3",  # dashes work too
            "--model.hidden_sizes",
            "[512, 128]",
            "--training.output_dir=runs/x",
            "--data.max_train_samples",
            "null",
            "--name",
            "mine",
        ],
    )
    assert recipe.stages[0].epochs == 2.0 and recipe.stages[0].name == "frozen"
    assert recipe.stages[1].learning_rate == 1e-5 and recipe.stages[1].last_k_blocks == 3
    assert recipe.model.hidden_sizes == [512, 128]
    assert recipe.training.output_dir == "runs/x"
    assert recipe.data.max_train_samples is None
    assert recipe.name == "mine"
    # Untouched keys keep the file's values.
    assert recipe.model.image_size == load_recipe("quickstart").model.image_size


def test_overrides_leave_the_input_untouched():
    data = {"stages": [{"name": "a", "epochs": 1}]}
    updated = apply_overrides(data, ["--stages.a.epochs", "3", "--model.image_size", "96"])
    assert data == {"stages": [{"name": "a", "epochs": 1}]}
    assert updated["stages"][0]["epochs"] == 3 and updated["model"] == {"image_size": 96}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--model.imag_size", "64"], "Unknown key 'model.imag_size' in recipe. Did you mean 'image_size'?"),
        (["--modle.image_size", "64"], "Unknown recipe section 'modle'. Did you mean 'model'?"),
        (
            ["--stages.unfrozen.epochs", "1"],
            "--stages.unfrozen.epochs: no stage 'unfrozen'; stages are ['frozen', 'finetune']",
        ),
        (["--stages.7.epochs", "1"], "no stage '7'"),
        (["--stages.epochs", "1"], "Stage overrides look like --stages.<index|name>.<key>"),
        (["--model.image_size"], "Override --model.image_size has no value."),
        (["model.image_size", "64"], "Unexpected argument 'model.image_size'"),
        (["--model.image_size", "sixty-four"], "model.image_size='sixty-four' is invalid: expected int."),
    ],
)
def test_override_errors(overrides, message):
    with pytest.raises(RecipeError) as error:
        load_recipe("quickstart", overrides)
    assert message in str(error.value)


def test_recipe_dataclasses_document_every_key():
    from hftransfer.recipes import SECTIONS, StageArguments

    for cls in (*SECTIONS.values(), StageArguments):
        for field in dataclasses.fields(cls):
            assert field.metadata.get("help"), f"{cls.__name__}.{field.name} has no help"


# --- issue 10, item 14: clear errors instead of tracebacks from deep inside training ----------------------------------


@pytest.mark.parametrize(
    "recipe_text, overrides, message",
    [
        (
            "data:\n  max_train_samples: 0\n",
            [],
            "error: data.max_train_samples=0 is invalid: expected a positive number of images, or null for all of them.",
        ),
        (
            "data:\n  max_eval_samples: -5\n",
            [],
            "error: data.max_eval_samples=-5 is invalid: expected a positive number of images, or null for all of them.",
        ),
        (
            "stages:\n- name: frozen\n  epochs: .nan\n",
            [],
            "error: stages[0].epochs=nan is invalid: expected a finite number.",
        ),
        (
            "stages:\n  frozen:\n    epochs: 1\n",
            ["--stages.frozen.epochs", "2"],
            "error: --stages.frozen.epochs: the recipe's 'stages' must be a list of stage mappings (- name: frozen ...), "
            "got a mapping; stage overrides address list entries by index or name.",
        ),
    ],
)
def test_bad_sample_counts_nan_epochs_and_mapping_stages_are_clear_errors(
    tmp_path, capsys, recipe_text, overrides, message
):
    from hftransfer.cli import main

    path = tmp_path / "recipe.yaml"
    path.write_text(recipe_text + f"training:\n  output_dir: {tmp_path / 'out'}\n")
    assert main(["train", str(path), *overrides, "--print-recipe"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == message
    assert not (tmp_path / "out").exists()


def test_recipe_changes_lists_what_changes_results_and_skips_safe_keys():
    from hftransfer.recipes import recipe_changes

    ran = Recipe().to_dict()
    new = yaml.safe_load(Recipe().to_yaml())
    assert recipe_changes(ran, new) == []
    new["stages"].append({**new["stages"][0], "name": "extra"})
    new["stages"][1]["epochs"] = 9
    new["training"].update(seed=1, logging_steps=3, report_to=["none"], gradient_accumulation_steps=2)
    new["hub"]["repo_id"] = "me/x"
    new["description"] = "changed"
    assert recipe_changes(ran, new) == [
        ("stages", ["frozen", "finetune"], ["frozen", "finetune", "extra"]),
        ("stages.finetune.epochs", 2.0, 9.0),
        ("training.gradient_accumulation_steps", "<unset>", 2),
        ("training.seed", 42, 1),
    ]
    assert recipe_changes(ran, new, ["stages", "stages.*.epochs", "training.*"]) == []
    assert recipe_changes(ran, new, ["*"]) == []


def test_build_model_and_processor_follows_the_model_section(tmp_path):
    from hftransfer.building import build_model_and_processor

    recipe = recipe_from_dict(
        {"model": {"backbone_weights": "random", "image_size": 32, "pooling": "avg", "hidden_sizes": [8]}}
    )
    id2label = {0: "cat", 1: "dog", 2: "bird"}
    model, processor = build_model_and_processor(recipe, id2label)
    expected = TransferConfig(**transfer_config_kwargs(recipe.model, recipe.data, id2label))
    for key in transfer_config_kwargs(recipe.model, recipe.data, id2label):
        assert getattr(model.config, key) == getattr(expected, key), key
    assert model.config.label2id == {"cat": 0, "dog": 1, "bird": 2}
    assert processor.size["height"] == 32
    # init_from loads a trained model as it is; its labels must be the dataset's.
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    recipe.model.init_from = str(tmp_path)
    loaded, _ = build_model_and_processor(recipe, id2label)
    assert loaded.config.id2label == id2label
    with pytest.raises(ValueError, match="predicts labels"):
        build_model_and_processor(recipe, {0: "cat", 1: "dog"})
