"""Issue 10, item 3: a training loss that becomes NaN/inf stops the stage with an error naming the stage and the step;
no non-finite weights are ever saved as a final model."""

from __future__ import annotations

import pytest
import torch
import yaml

from hftransfer.cli import main
from hftransfer.errors import NonFiniteError
from hftransfer.training.trainer import check_finite_weights


def test_a_diverging_stage_stops_with_an_error_naming_stage_and_step(tmp_path, make_recipe, feature_cache_dir, capsys):
    output_dir = tmp_path / "out"
    recipe = make_recipe(
        output_dir,
        feature_cache_dir,
        data={"max_train_samples": 64, "max_eval_samples": 32},
        # Adam moves every weight by ~learning_rate per step: 1e30 overflows the logits within two steps.
        stages=[{"name": "frozen", "epochs": 2, "learning_rate": 1e30, "trainable": "head"}],
        training={"per_device_train_batch_size": 16},
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))

    code = main(["train", str(path)])

    err = capsys.readouterr().err
    assert code == 1, err[-3000:]
    message = next(line for line in err.splitlines() if line.startswith("error: "))
    assert message.startswith("error: Stage frozen: the training loss is ")
    assert " at step " in message and ("nan" in message or "inf" in message)
    assert "Traceback" not in err
    # Nothing non-finite was saved as a model: no final model, no finished stage, no metrics or card.
    assert not (output_dir / "model.safetensors").exists()
    assert not (output_dir / "stages" / "00-frozen" / "final").exists()
    assert not (output_dir / "stages" / "00-frozen" / "stage_complete.json").exists()
    assert not (output_dir / "metrics.json").exists() and not (output_dir / "README.md").exists()


def test_non_finite_weights_are_refused_before_saving():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    check_finite_weights(model, "the final model")  # finite: no error
    with torch.no_grad():
        model[1].weight[0, 0] = float("inf")
        model[0].bias[1] = float("nan")
    with pytest.raises(NonFiniteError) as info:
        check_finite_weights(model, "the final model (out)")
    assert str(info.value).startswith("2 weight tensors hold NaN or inf (0.bias, 1.weight): the final model (out)")
