"""The recipes' arguments and defaults: validation vs test, configs (CLI, JSON, YAML), budget, learning rates, summary."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_models import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import common  # noqa: E402
import finetune_vit  # noqa: E402

SMALL = ["--shots_per_class", "3", "--max_eval_samples", "30", "--nc_train_samples", "20", "--per_device_train_batch_size", "8",
         "--per_device_eval_batch_size", "16"]


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vit")
    build_tiny_model("vit_cls").save_pretrained(path)
    return str(path)


# ------------------------------------------------------------------------------------- validation vs test
def test_selection_runs_on_validation_and_test_is_evaluated_once_at_the_end(tiny_vit, tmp_path, monkeypatch, capsys):
    calls = []

    class Spy(common.RecipeTrainer):
        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            data = self.eval_dataset if eval_dataset is None else eval_dataset
            calls.append({"prefix": metric_key_prefix, "n": len(data), "in_train": self.is_in_train, "step": self.state.global_step})
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    monkeypatch.setattr(common, "RecipeTrainer", Spy)
    summary = finetune_vit.main(["--model_name_or_path", tiny_vit, "--output_dir", str(tmp_path), "--method", "layer", *SMALL,
                                 "--validation_shots_per_class", "2", "--max_steps", "4", "--eval_strategy", "steps", "--eval_steps", "2",
                                 "--save_strategy", "steps", "--save_steps", "2", "--load_best_model_at_end",
                                 "--metric_for_best_model", "accuracy"])
    assert summary["num_images"] == {"train": 30, "validation": 20, "test": 30}
    test_calls = [c for c in calls if c["prefix"] == "test"]
    assert test_calls == [calls[-1]] and not calls[-1]["in_train"] and calls[-1]["n"] == 30  # once, last, after training
    assert all(c["n"] == 20 for c in calls[:-1]) and [c["step"] for c in calls if c["in_train"]] == [2, 4]
    history = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    assert not any(k.startswith("test_") for entry in history for k in entry)  # nothing of test reached selection
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    best = max((e for e in history if "eval_accuracy" in e), key=lambda e: e["eval_accuracy"])
    assert state["best_metric"] == pytest.approx(best["eval_accuracy"])
    for key in ("validation_accuracy", "test_accuracy", "validation_nc1", "test_nc1", "train_nc1"):
        assert summary[key] == summary[key], key  # reported, not NaN
    assert summary["validation_accuracy"] == pytest.approx(best["eval_accuracy"])  # the best model, re-evaluated
    assert "validation" in summary["splits"] and "few-shot" in summary["splits"]["validation"]
    printed = capsys.readouterr().out
    assert "val acc" in printed and "test acc" in printed and "val NC1" in printed and "test NC1" in printed


def test_no_validation_split_means_no_selection(tiny_vit, tmp_path):
    args = ["--model_name_or_path", tiny_vit, "--output_dir", str(tmp_path), "--method", "layer", *SMALL, "--max_steps", "2",
            "--train_val_split", "0"]
    with pytest.raises(ValueError, match="validation split"):
        finetune_vit.main([*args, "--load_best_model_at_end", "--save_strategy", "steps", "--eval_strategy", "steps"])
    summary = finetune_vit.main(args)  # trains, evaluates test once
    assert summary["num_images"]["validation"] == 0 and summary["validation_accuracy"] is None
    assert summary["test_accuracy"] == summary["test_accuracy"]


# ------------------------------------------------------------------------------------- configs
def write_config(path: Path, config: dict) -> str:
    if path.suffix == ".json":
        path.write_text(json.dumps(config))
    else:
        import yaml

        path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
@pytest.mark.parametrize("key, value", [("method", "lorra"), ("augment", "rotate"), ("scl_combine", "sum"), ("part", "mlps")])
def test_config_file_with_a_bad_choice_fails_clearly(suffix, key, value, tmp_path):
    config = write_config(tmp_path / f"config{suffix}", {"output_dir": str(tmp_path), key: value})
    with pytest.raises(ValueError, match=f"{key}={value!r} is not one of"):
        finetune_vit.main([config])


def test_config_file_with_an_unknown_key_fails(tmp_path):
    config = write_config(tmp_path / "config.yaml", {"output_dir": str(tmp_path), "methd": "full"})
    with pytest.raises(ValueError, match="methd"):
        finetune_vit.main([config])


def test_command_line_offers_the_choices(capsys):
    with pytest.raises(SystemExit):
        finetune_vit.main(["--method", "lorra"])
    err = capsys.readouterr().err
    assert "invalid choice: 'lorra'" in err and "linear_probe" in err


def test_good_yaml_config_runs(tiny_vit, tmp_path):
    config = write_config(tmp_path / "config.yml", {
        "model_name_or_path": tiny_vit, "output_dir": str(tmp_path / "out"), "method": "layer", "layers": "-1", "part": "mlp",
        "max_steps": 2, "shots_per_class": 3, "max_eval_samples": 20, "nc_train_samples": 20, "per_device_train_batch_size": 8,
        "learning_rate": 0.02})
    summary = finetune_vit.main([config])
    assert summary["method"] == "layer" and summary["settings"]["learning_rate"] == 0.02 and summary["settings"]["optimizer_steps"] == 2
    assert summary["args"]["method"]["part"] == "mlp" and (tmp_path / "out" / "summary.json").is_file()


def test_help_puts_hf_nc_options_apart_from_training_arguments(capsys):
    with pytest.raises(SystemExit):
        finetune_vit.main(["--help"])
    text = capsys.readouterr().out
    intro, model, data, method, training = (text.index(s) for s in ("hf-nc options come first", "hf-nc model:", "hf-nc data:",
                                                                      "hf-nc method and budget:", "TrainingArguments (transformers):"))
    assert intro < model < data < method < training
    assert text.index("--method") < training and text.index("--train_val_split") < training
    assert "outside the few-shot subset" in " ".join(text.split()).replace("OUTSIDE", "outside")


def test_progress_bars_are_on_by_default():
    _, _, _, targs = common.parse(finetune_vit.ViTTrainingArguments, ["--output_dir", "x"])
    assert targs.disable_tqdm is False
