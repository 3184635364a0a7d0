"""recipes/pretrain_vit.py: every loss trains on tiny data, logs source NC1, saves a clean checkpoint."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--image_size", "8", "--patch_size", "2", "--hidden_size", "32",
        "--num_hidden_layers", "2", "--num_attention_heads", "2", "--nc_samples", "200",
        "--per_device_train_batch_size", "64", "--learning_rate", "3e-3", "--warmup_ratio", "0",
        "--torch_threads", "1", "--logging_steps", "1000", "--seed", "0"]


@pytest.fixture(scope="module")
def recipe():
    sys.path.insert(0, str(ROOT / "recipes"))  # its sibling modules (recipe_args), as when run as a script
    spec = importlib.util.spec_from_file_location("pretrain_vit", ROOT / "recipes" / "pretrain_vit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pretrain_vit"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)
    sys.modules.pop("pretrain_vit", None)


def _run(recipe, out, *extra):
    return recipe.main(["--output_dir", str(out), *TINY, *extra])


@pytest.mark.parametrize(
    "extra",
    [
        ["--loss", "ce"],
        ["--loss", "label_smoothing"],
        ["--loss", "mse"],
        ["--loss", "supcon"],  # in-batch positives, one view
        ["--loss", "supcon", "--augment", "crop", "--projection_head", "true"],  # two views
        ["--loss", "ce", "--projection_head", "true", "--augment", "crop"],
    ],
    ids=["ce", "label_smoothing", "mse", "supcon", "supcon-2views-proj", "ce-proj"],
)
def test_loss_decreases_and_checkpoint_loads(recipe, tmp_path, extra):
    from transformers import AutoImageProcessor, ViTForImageClassification

    # A fresh ViT's CLS features are nearly identical (cos ~ 0.997), a flat start for supcon without
    # the projection head's BatchNorm: it needs ~40 steps to leave log(n-1), so it runs longer.
    steps = 100 if extra == ["--loss", "supcon"] else 60
    rec = _run(recipe, tmp_path, "--max_steps", str(steps), "--eval_each_epoch", "false", *extra)
    losses = rec["losses"]
    assert len(losses) == steps and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:15]) / 15, sum(losses[-15:]) / 15
    assert last < 0.9 * first, (first, last)

    # source NC1 logged before training and after each epoch (21 steps per epoch here)
    assert [h["epoch"] for h in rec["history"]] == list(range(math.ceil(steps / 21) + 1))
    assert all(math.isfinite(h["nc"]["nc1"]) and h["nc"]["nc1"] > 0 for h in rec["history"])
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["history"][-1]["nc"]["nc1"] == pytest.approx(rec["history"][-1]["nc"]["nc1"])
    assert rec["learning_rates"] == pytest.approx([3e-3 * 0.5 * (1 + math.cos(math.pi * k / steps)) for k in range(1, steps + 1)])
    card = (tmp_path / "README.md").read_text()
    assert "NC1" in card and "python " in card and "--loss" in card

    model, info = ViTForImageClassification.from_pretrained(tmp_path, local_files_only=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.config.id2label[3] == "3" and model.config.num_labels == 10
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert all(f.get_tensor(k).dtype == torch.float32 for k in keys)
    assert all(k.startswith(("vit.", "classifier.")) for k in keys)  # no projection head, no wrapper
    processor = AutoImageProcessor.from_pretrained(tmp_path, local_files_only=True)
    assert processor.size["height"] == 8 and list(processor.image_mean) == [0.5]
    logits = model(pixel_values=torch.randn(2, 1, 8, 8)).logits
    assert logits.shape == (2, 10)
    # the saved classifier is usable: better than chance on digits after 60 steps
    assert rec["test_accuracy"] > 0.2


def test_class_split_and_max_train_samples(recipe, tmp_path):
    rec = _run(recipe, tmp_path, "--max_steps", "3", "--classes", "5,6,7,8,9", "--max_train_samples", "200",
               "--max_eval_samples", "50")
    assert rec["class_names"] == ["5", "6", "7", "8", "9"]
    assert rec["num_train"] == 200 and rec["num_test"] == 50 and rec["steps"] == 3
    assert json.loads((tmp_path / "config.json").read_text())["id2label"]["0"] == "5"


def test_same_seed_same_run(recipe, tmp_path):
    a = _run(recipe, tmp_path / "a", "--max_steps", "5", "--augment", "crop,flip")
    b = _run(recipe, tmp_path / "b", "--max_steps", "5", "--augment", "crop,flip")
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-5)


@pytest.mark.slow
def test_two_processes_torchrun(tmp_path):
    """Two real CPU processes (gloo): NC statistics all-reduced, one checkpoint written."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "recipes" / "pretrain_vit.py"), "--output_dir", str(tmp_path), *TINY, "--max_steps", "4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "history.json").read_text())
    assert rec["num_processes"] == 2 and rec["steps"] == 4
    assert math.isfinite(rec["history"][-1]["nc"]["nc1"])
    # one cosine over the 4 optimizer steps, as on one process (Accelerate steps a prepared scheduler once per
    # process: the LR used to reach 0 after 2 steps and climb back to its peak by the last one)
    assert rec["learning_rates"] == pytest.approx([3e-3 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(1, 5)])
    assert (tmp_path / "model.safetensors").is_file()


@pytest.mark.parametrize("flag", ["--max_train_samples", "--max_eval_samples", "--nc_samples"])
def test_sample_counts_of_zero_are_an_error_naming_the_flag(recipe, flag, tmp_path):
    with pytest.raises(ValueError, match=f"{flag} must be >= 1"):
        _run(recipe, tmp_path, flag, "0", "--max_steps", "1")


@pytest.mark.parametrize("flag, message", [("--max_train_samples", r"the 3 training images kept hold no image of class\(es\)"),
                                           ("--max_eval_samples", "3: a stratified subset of 3 cannot hold all 10 classes")])
def test_a_sample_count_that_drops_a_class_is_an_error_naming_the_flag(recipe, flag, message, tmp_path):
    # 3 images cannot hold 10 classes: the training run used to fail at its first epoch (a class with no
    # samples), the test subset to report the accuracy of one class as the test accuracy
    with pytest.raises(ValueError, match=rf"{flag}:? {message}"):
        _run(recipe, tmp_path, flag, "3", "--max_steps", "1")


def test_max_eval_samples_of_a_class_sorted_test_folder_is_stratified(recipe, tmp_path):
    # an image folder's test/ split is read class by class: the first 21 of 3 x 10 test images were
    # 10, 10 and 1 of the classes, and the test accuracy mostly two classes'
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 10)):
        for c in "abc":
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "data" / split / c / f"{i}.png")
    rec = _run(recipe, tmp_path / "out", "--dataset", str(tmp_path / "data"), "--max_eval_samples", "21", "--max_steps", "1")
    assert rec["num_test"] == 21 and rec["num_test_per_class"] == [7, 7, 7]


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_an_output_dir_that_cannot_hold_the_checkpoint_fails_before_training(recipe, tmp_path, kind, monkeypatch):
    # the folder used to be made only after the last epoch: a path that was a file (or below one) lost the
    # whole run at the end, with a bare FileExistsError / NotADirectoryError
    (tmp_path / "taken").write_text("not a folder")
    out, match = {"a file": (tmp_path / "taken", "exists and is not a folder"),
                  "under a file": (tmp_path / "taken" / "run", "cannot be created")}[kind]
    steps = []
    real = recipe.compute_loss
    monkeypatch.setattr(recipe, "compute_loss", lambda *a: steps.append(1) or real(*a))
    with pytest.raises(ValueError, match=f"--output_dir {out} {match}"):
        _run(recipe, out, "--max_steps", "2")
    assert not steps  # raised before training


def test_an_nc_subset_that_misses_a_class_is_an_error_naming_the_flag(recipe, tmp_path):
    # 5 random images cannot hold 10 classes: NCStats used to raise "6 class(es) have no samples", naming no flag
    with pytest.raises(ValueError, match=r"--nc_samples: the 5 random training images .* hold no image of class\(es\)"):
        _run(recipe, tmp_path, "--nc_samples", "5", "--max_steps", "1")


def test_one_source_class_is_an_error_naming_the_flag(recipe, tmp_path):
    with pytest.raises(ValueError, match=r"--classes: pre-training needs at least 2 classes, got \['3'\]"):
        _run(recipe, tmp_path, "--classes", "3", "--max_steps", "1")


def test_a_patch_larger_than_the_image_is_an_error_naming_both_flags(recipe, tmp_path, capsys):
    # used to fail at the first forward with torch's "Kernel size can't be greater than actual input size"
    with pytest.raises(SystemExit):
        _run(recipe, tmp_path, "--patch_size", "16", "--max_steps", "1")
    assert "--patch_size 16 must be between 1 and --image_size 8" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--label_smoothing", "0.2"], "--label_smoothing 0.2 applies only with --loss label_smoothing"),
    (["--loss", "mse", "--supcon_temperature", "0.5"], "--supcon_temperature 0.5 applies only with --loss supcon"),
    (["--projection_dim", "16"], "--projection_dim 16 applies only with --projection_head"),
    (["--projection_head", "--per_device_train_batch_size", "1"], "--projection_head needs --per_device_train_batch_size >= 2"),
])
def test_a_flag_the_run_would_ignore_is_a_usage_error(recipe, tmp_path, capsys, flags, message):
    # --label_smoothing 0.2 with the default --loss ce used to train plain cross-entropy without a word;
    # a projection head on batches of one died at the first step in BatchNorm
    with pytest.raises(SystemExit):
        _run(recipe, tmp_path / "out", "--max_steps", "1", *flags)
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_flag_its_loss_reads_is_accepted(recipe, tmp_path):
    rec = _run(recipe, tmp_path / "out", "--max_steps", "1", "--loss", "label_smoothing", "--label_smoothing", "0.2",
               "--eval_each_epoch", "false")
    assert rec["steps"] == 1


def test_the_train_loss_of_a_short_last_epoch_is_its_own(recipe, tmp_path):
    # 30 steps at 21 per epoch: epoch 2 has 9 steps; its train_loss used to average the last 21 losses,
    # 12 of them from epoch 1
    rec = _run(recipe, tmp_path, "--max_steps", "30", "--eval_each_epoch", "false")
    losses = rec["losses"]
    assert [h["step"] for h in rec["history"]] == [0, 21, 30]
    assert rec["history"][1]["train_loss"] == pytest.approx(sum(losses[:21]) / 21)
    assert rec["history"][2]["train_loss"] == pytest.approx(sum(losses[21:]) / 9)


@pytest.mark.parametrize("flags, match", [
    (["--num_train_epochs", "0"], r"--num_train_epochs must be > 0 \(or --max_steps >= 1\), got 0.0"),
    (["--num_train_epochs", "-2"], r"--num_train_epochs must be > 0"),
    (["--max_steps", "2", "--logging_steps", "0"], r"--logging_steps must be >= 1, got 0"),
    (["--max_steps", "2", "--loss", "supcon", "--head_fit_steps", "0"], r"--head_fit_steps \(the classifier is refitted"),
    (["--max_steps", "2", "--per_device_train_batch_size", "0"], r"--per_device_train_batch_size must be >= 1"),
    (["--max_steps", "2", "--gradient_accumulation_steps", "0"], r"--gradient_accumulation_steps must be >= 1"),
    (["--max_steps", "2", "--warmup_ratio", "1.5"], r"--warmup_ratio must be in \[0, 1\], got 1.5"),
], ids=["epochs-0", "epochs-negative", "logging-0", "head-fit-0", "batch-0", "accumulation-0", "warmup-1.5"])
def test_step_count_flags_are_checked_before_any_work(recipe, tmp_path, flags, match):
    # 0 / negative epochs saved the random init as a "pre-trained" checkpoint (0 steps, a card, no error);
    # --logging_steps 0 died at the first step with ZeroDivisionError; --head_fit_steps 0 saved a random head
    with pytest.raises(ValueError, match=match):
        _run(recipe, tmp_path / "out", *flags)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(recipe, tmp_path, monkeypatch):
    """Killed in its third epoch, the run goes on from the last finished epoch's state with
    --resume_from_checkpoint: same losses, learning rates, history and weights as a run never
    interrupted (augmentation RNG, shuffling, optimizer and schedule restored); the resumable
    state is removed once the run is saved; another flag on resumption is an error naming it."""
    flags = ["--num_train_epochs", "3", "--max_train_samples", "256", "--augment", "crop,flip", "--eval_each_epoch", "false"]
    whole = _run(recipe, tmp_path / "whole", *flags)
    assert not (tmp_path / "whole" / recipe.RESUME_DIR).exists()

    real, calls = recipe.compute_loss, []

    def dies_in_epoch_3(*a, **k):
        calls.append(1)
        if len(calls) > 2 * 4 + 1:  # 4 steps per epoch: the second step of epoch 3
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(recipe, "compute_loss", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        _run(recipe, tmp_path / "cut", *flags)
    monkeypatch.setattr(recipe, "compute_loss", real)
    assert json.loads((tmp_path / "cut" / recipe.RESUME_DIR / "progress.json").read_text())["step"] == 8
    with pytest.raises(ValueError, match=r"other flags: --learning_rate 0.003 \(now 0.001\)"):
        _run(recipe, tmp_path / "cut", *flags, "--resume_from_checkpoint", "true", "--learning_rate", "1e-3")
    resumed = _run(recipe, tmp_path / "cut", *flags, "--resume_from_checkpoint", "true")

    assert resumed["steps"] == whole["steps"] == 12
    assert resumed["losses"] == pytest.approx(whole["losses"], rel=1e-6)
    assert resumed["learning_rates"] == pytest.approx(whole["learning_rates"])
    assert [h["nc"]["nc1"] for h in resumed["history"]] == pytest.approx([h["nc"]["nc1"] for h in whole["history"]], rel=1e-6)
    with safe_open(str(tmp_path / "whole" / "model.safetensors"), "pt") as a, safe_open(str(tmp_path / "cut" / "model.safetensors"), "pt") as b:
        for key in a.keys():
            torch.testing.assert_close(b.get_tensor(key), a.get_tensor(key), rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "cut" / recipe.RESUME_DIR).exists()
    with pytest.raises(ValueError, match="no resumable state"):
        _run(recipe, tmp_path / "cut", *flags, "--resume_from_checkpoint", "true")
