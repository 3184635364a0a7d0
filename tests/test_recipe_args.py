"""The recipes' arguments and defaults: validation vs test, configs (CLI, JSON, YAML), budget, learning rates, summary."""

import json
import re
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


# ------------------------------------------------------------------------------------- budget and learning rates
def budget(argv: list[str], num_train: int, head_reset=True):
    _, _, method, targs = common.parse(finetune_vit.ViTTrainingArguments, ["--output_dir", "x", *argv])
    return common.plan_budget(targs, method, num_train, head_reset), targs


def test_default_budget_depends_on_the_data():
    # 10 shots x 10 classes at batch 64: 2 steps per epoch; 6 epochs would be 12 steps
    settings, targs = budget(["--method", "layer"], 100)
    assert settings["steps_per_epoch"] == 2 and targs.num_train_epochs == 100 and settings["planned_steps"] == 200
    settings, targs = budget(["--method", "layer"], 50_000)  # a big dataset keeps the minimum epochs
    assert targs.num_train_epochs == common.DEFAULT_MIN_EPOCHS and settings["planned_steps"] == 6 * 782
    settings, targs = budget(["--method", "layer", "--num_train_epochs", "3"], 100)  # an explicit value stands
    assert targs.num_train_epochs == 3 and settings["planned_steps"] == 6
    settings, targs = budget(["--method", "layer", "--min_train_steps", "0"], 100)
    assert targs.num_train_epochs == common.DEFAULT_MIN_EPOCHS
    settings, _ = budget(["--method", "layer", "--max_steps", "7"], 100)
    assert settings["planned_steps"] == 7


@pytest.mark.parametrize("method, lr, head_lr", [("linear_probe", 1e-2, 1e-2), ("full", 1e-3, 1e-2), ("scl", 3e-3, 3e-3)])
def test_default_learning_rates_per_method(method, lr, head_lr):
    settings, targs = budget(["--method", method], 100)
    assert targs.learning_rate == lr and settings["head_learning_rate"] == pytest.approx(head_lr)
    settings, _ = budget(["--method", "full"], 100, head_reset=False)  # the checkpoint's own head: no boost
    assert settings["head_learning_rate"] == 1e-3
    settings, targs = budget(["--method", "full", "--learning_rate", "5e-5", "--head_learning_rate", "1e-3"], 100)
    assert targs.learning_rate == 5e-5 and settings["head_learning_rate"] == 1e-3


def test_full_fine_tuning_gives_the_new_head_its_own_learning_rate(tiny_vit, tmp_path, monkeypatch):
    seen = {}

    class Spy(common.RecipeTrainer):
        def create_optimizer(self, model=None):
            optimizer = super().create_optimizer(model)
            seen["groups"] = [(g["lr"], {id(p) for p in g["params"]}) for g in optimizer.param_groups]
            seen["head"] = {id(p) for p in common.resolve_backbone(self.model).classifier.parameters()}
            seen["all"] = {id(p) for p in self.model.parameters()}
            return optimizer

    monkeypatch.setattr(common, "RecipeTrainer", Spy)
    summary = finetune_vit.main(["--model_name_or_path", tiny_vit, "--output_dir", str(tmp_path), "--method", "full", *SMALL,
                                 "--max_steps", "1", "--eval_strategy", "no", "--lr_scheduler_type", "constant", "--warmup_steps", "0"])
    by_lr = {}
    for lr, ids in seen["groups"]:
        by_lr.setdefault(lr, set()).update(ids)
    assert by_lr == {1e-3: seen["all"] - seen["head"], 1e-2: seen["head"]}  # every parameter once, the head at 10x
    assert summary["settings"]["learning_rate"] == 1e-3 and summary["settings"]["head_learning_rate"] == 1e-2


# ------------------------------------------------------------------------------------- summary and table
def test_summary_records_every_setting_and_the_tuned_blocks(tiny_vit, tmp_path, capsys):
    import peft
    import transformers

    summary = finetune_vit.main(["--model_name_or_path", tiny_vit, "--output_dir", str(tmp_path), "--method", "layer", "--layers=-1,-2",
                                 *SMALL, "--max_steps", "3", "--seed", "3", "--image_size", "24"])
    s = json.loads((tmp_path / "summary.json").read_text())["settings"]
    assert s["learning_rate"] == 3e-3 and s["optimizer_steps"] == 3 and s["per_device_train_batch_size"] == 8
    assert s["global_batch_size"] == 8 and s["num_processes"] == 1 and s["seed"] == 3 and s["image_size"] == [24, 24]
    assert s["transformers"] == transformers.__version__ and s["peft"] == peft.__version__ and s["torch"] == torch.__version__
    assert s["hf_nc"] and s["num_train_epochs"] > 0
    training_args = json.loads((tmp_path / "summary.json").read_text())["training_args"]  # every TrainingArguments value
    assert training_args["seed"] == 3 and training_args["learning_rate"] == 3e-3 and training_args["max_steps"] == 3
    assert summary["tuned"] == "block 3,2"  # 4 blocks: -1, -2 -> 3, 2
    printed = capsys.readouterr().out
    assert "block 3,2" in printed and "% of base" in printed


@pytest.mark.parametrize("accumulate, drop_last, per_epoch", [(1, False, 4), (3, False, 2), (1, True, 3)])
def test_planned_steps_are_the_steps_the_trainer_takes(accumulate, drop_last, per_epoch, tiny_vit, tmp_path):
    # 30 images at batch 8: 4 batches per epoch (3 with drop_last); with 3-step accumulation the Trainer takes 2
    # optimizer steps per epoch (the last, short window still steps; 1 was planned), so the default budget
    # (--min_train_steps) needs fewer epochs than it planned
    summary = finetune_vit.main(["--model_name_or_path", tiny_vit, "--output_dir", str(tmp_path), "--method", "layer", *SMALL,
                                 "--gradient_accumulation_steps", str(accumulate), "--min_train_steps", "8", "--eval_strategy", "no",
                                 "--save_strategy", "no", "--train_val_split", "0", "--dataloader_drop_last", str(drop_last).lower()])
    s = summary["settings"]
    assert s["steps_per_epoch"] == per_epoch and s["num_train_epochs"] == max(common.DEFAULT_MIN_EPOCHS, 8 // s["steps_per_epoch"])
    assert s["planned_steps"] == s["optimizer_steps"]


@pytest.mark.parametrize("method, extra", [("lora", ["--lora_r", "2"]), ("scl", ["--layer", "-2"]), ("heads", ["--heads=-1:0"])])
def test_trainable_share_is_of_the_base_model(method, extra, tiny_vit, tmp_path):
    from transformers import AutoModelForImageClassification

    base = AutoModelForImageClassification.from_pretrained(tiny_vit, num_labels=10, ignore_mismatched_sizes=True)
    base_params = sum(p.numel() for p in base.parameters())
    summary = finetune_vit.main(["--model_name_or_path", tiny_vit, "--output_dir", str(tmp_path), "--method", method, *extra, *SMALL,
                                 "--max_steps", "1", "--eval_strategy", "no"])
    assert summary["total_params"] == base_params
    assert summary["trainable_percent"] == pytest.approx(100 * summary["trainable_params"] / base_params)


def test_saved_adapter_keeps_the_task_class_names(tiny_vit, tmp_path):
    import hf_nc

    finetune_vit.main(["--model_name_or_path", tiny_vit, "--output_dir", str(tmp_path), "--method", "heads", "--heads=-1:0", *SMALL,
                       "--max_steps", "1", "--eval_strategy", "no"])
    model = hf_nc.AutoPeftModelForImageClassification.from_pretrained(str(tmp_path / "adapter"))
    assert [model.config.id2label[i] for i in range(10)] == [str(i) for i in range(10)]


def test_saved_adapter_readme_is_the_hf_nc_card_with_validation_and_test(tiny_vit, tmp_path):
    from huggingface_hub import ModelCard

    summary = finetune_vit.main(["--model_name_or_path", tiny_vit, "--output_dir", str(tmp_path), "--method", "layer", *SMALL,
                                 "--max_steps", "1", "--eval_strategy", "no"])
    card = ModelCard.load(str(tmp_path / "adapter" / "README.md"))
    assert "import hf_nc" in card.text
    metrics = card.data.to_dict()["hf_nc"]["metrics"]  # (model-index needs a Hub base id; this base is a local folder)
    assert metrics["validation/eval_accuracy"] == pytest.approx(summary["validation_accuracy"])
    assert metrics["test/test_accuracy"] == pytest.approx(summary["test_accuracy"])
    assert metrics["test/test_nc1"] == pytest.approx(summary["test_nc1"])


# ------------------------------------------------------------------------------------- FSDP
def test_fsdp_the_trainer_did_not_enable_is_an_error():
    from transformers.trainer_utils import FSDPOption

    trainer = SimpleNamespace(args=SimpleNamespace(fsdp=[FSDPOption.FULL_SHARD]), is_fsdp_enabled=False)
    with pytest.raises(ValueError, match="did not enable FSDP"):
        common.check_fsdp(trainer)
    common.check_fsdp(SimpleNamespace(args=SimpleNamespace(fsdp=[FSDPOption.FULL_SHARD]), is_fsdp_enabled=True))
    common.check_fsdp(SimpleNamespace(args=SimpleNamespace(fsdp=[]), is_fsdp_enabled=False))
    with pytest.raises(ValueError, match="did not enable FSDP"):  # transformers 5 may keep `--fsdp` as True
        common.check_fsdp(SimpleNamespace(args=SimpleNamespace(fsdp=True), is_fsdp_enabled=False))


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_is_not_a_silent_ddp_run(tiny_vit, tmp_path):
    import os
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "recipes/accelerate_configs/cpu_2proc.yaml"),
           "--main_process_port", "29547", str(ROOT / "recipes/finetune_vit.py"), "--model_name_or_path", tiny_vit, "--method", "layer",
           *SMALL, "--max_steps", "1", "--fsdp", "full_shard", "--output_dir", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    if proc.returncode == 0:  # a Trainer that does enable FSDP on CPU: then it really ran sharded
        assert (tmp_path / "summary.json").is_file()
    else:
        assert "did not enable FSDP" in proc.stderr, proc.stderr[-3000:]
        assert not (tmp_path / "nc_history.json").exists()  # stopped before training


# ------------------------------------------------------------------------------------- --nc_train_samples
def test_nc_train_samples_help_matches_the_trainer(capsys):
    with pytest.raises(SystemExit):
        finetune_vit.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0: no train NC" in text and "-1: all training images" in text


@pytest.mark.parametrize("value, measured", [("0", None), ("-1", 30), ("15", 15)])
def test_nc_train_samples_values(value, measured, tiny_vit, tmp_path, monkeypatch):
    seen = {}

    class Spy(common.RecipeTrainer):
        def train_nc_metrics(self):
            seen["n"] = len(self._nc_train_indices)
            return super().train_nc_metrics()

    monkeypatch.setattr(common, "RecipeTrainer", Spy)
    args = [a for a in SMALL if a not in ("--nc_train_samples", "20")]
    summary = finetune_vit.main(["--model_name_or_path", tiny_vit, "--output_dir", str(tmp_path), "--method", "layer", *args,
                                 "--max_steps", "1", "--eval_strategy", "no", "--nc_train_samples", value])
    assert seen.get("n") == measured
    assert (summary["train_nc1"] == summary["train_nc1"]) is (measured is not None)  # NaN when off


def test_clip_recipe_runs_at_another_image_size(tmp_path):
    import finetune_clip

    summary = finetune_clip.main(["--output_dir", str(tmp_path), "--method", "lora", *SMALL, "--max_steps", "1", "--eval_strategy", "no",
                                  "--image_size", "48"])
    assert summary["settings"]["image_size"] == [48, 48] and summary["test_accuracy"] == summary["test_accuracy"]
    import json as _json

    saved = _json.loads((tmp_path / "adapter" / "preprocessor_config.json").read_text())
    assert saved["crop_size"] == {"height": 48, "width": 48}  # the saved processor feeds the size the model was trained at


# ------------------------------------------------------------------------------------- list-valued flags
def test_list_flags_accept_spaces_and_name_the_flag_when_wrong():
    import recipe_model

    heads = common.MethodArguments(method="heads", heads="11:0, 1; -2:all", head_projections="q, v")
    cfg = recipe_model.peft_config(heads, None)
    assert cfg.projections == ["q", "v"] and cfg.heads == {11: [0, 1], -2: "all"}  # was {11: [0], 1: "all", -2: "all"}
    assert recipe_model.parse_heads("11:0,1 10:all") == {11: [0, 1], 10: "all"}  # spaces before a block still separate
    with pytest.raises(ValueError, match="block 11 is given twice"):
        recipe_model.parse_heads("11:0;11:1")
    layer = common.MethodArguments(method="layer", layers=" 9, -1,")
    assert recipe_model.peft_config(layer, None).layers == [9, -1]
    assert recipe_model.tuned_blocks(layer, 12) == "block 9,11"
    lora = common.MethodArguments(method="lora", lora_target_modules="query, value")
    assert set(recipe_model.peft_config(lora, None).target_modules) == {"query", "value"}
    for method, flag, value in (("layer", "--layers", ""), ("layer", "--layers", "9,x"), ("heads", "--head_projections", " , "),
                                ("heads", "--heads", "11:0,a"), ("lora", "--lora_target_modules", ",")):
        field = {"--layers": "layers", "--head_projections": "head_projections", "--heads": "heads",
                 "--lora_target_modules": "lora_target_modules"}[flag]
        with pytest.raises(ValueError, match=flag):
            recipe_model.peft_config(common.MethodArguments(method=method, **{field: value}), None)


def test_nc_report_layers_flag_names_a_bad_value(tmp_path):
    import nc_report

    with pytest.raises(ValueError, match="--layers: 'x' is not an integer index"):
        nc_report.main(["--output_dir", str(tmp_path), "--layers", "1,x", "--shots_per_class", "2"])
    with pytest.raises(ValueError, match="--max_samples must be >= 1"):  # was "a subset needs n >= 1", no flag named
        nc_report.main(["--output_dir", str(tmp_path), "--max_samples", "0"])


def test_image_size_zero_is_an_error_not_the_models_size(tiny_vit, tmp_path):
    with pytest.raises(ValueError, match="image_size must be positive, got 0"):  # was: silently the model's own size
        finetune_vit.main(["--model_name_or_path", tiny_vit, "--output_dir", str(tmp_path), *SMALL, "--max_steps", "1",
                           "--method", "full", "--image_size", "0"])


def test_nc_train_samples_default_holds_every_class():
    # a fixed 512 could not hold one image of each of 1000 classes: the recipe failed on ImageNet-sized label sets
    from recipe_args import DataArguments, nc_train_samples_for

    assert DataArguments().nc_train_samples is None
    assert nc_train_samples_for(None, 10) == 512 and nc_train_samples_for(None, 1000) == 2000
    assert nc_train_samples_for(-1, 1000) == -1 and nc_train_samples_for(0, 1000) == 0 and nc_train_samples_for(64, 10) == 64


# ------------------------------------------------------------------------------------- flags of another method
@pytest.mark.parametrize("method, flags, named", [
    ("layer", ["--layer", "3"], "--layer 3 applies to --method scl only, not --method layer"),  # used to tune block -1
    ("scl", ["--layers=2"], "--layers 2 applies to --method layer only"),
    ("full", ["--lora_r", "4"], "--lora_r 4 applies to --method lora only"),
    ("lora", ["--scl_combine", "concat"], "--scl_combine concat applies to --method scl only"),
    ("layer", ["--heads=-1:0"], "--heads -1:0 applies to --method heads only"),
])
def test_a_flag_of_another_method_is_an_error_not_ignored(method, flags, named, tmp_path):
    with pytest.raises(ValueError, match=re.escape(named)):
        finetune_vit.main(["--output_dir", str(tmp_path), "--method", method, *flags, "--max_steps", "1"])
    assert not any(tmp_path.iterdir())  # refused before any work


def test_a_flag_of_another_method_is_an_error_in_a_config_file_too(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"output_dir": str(tmp_path / "out"), "method": "layer", "layer": 3}))
    with pytest.raises(ValueError, match="--layer 3 applies to --method scl only"):
        common.parse(common.RecipeTrainingArguments, [str(config)])
    method = common.parse(common.RecipeTrainingArguments, ["--method", "layer", "--layers=3"])[2]
    assert method.layers == "3"  # the method's own flags are untouched
