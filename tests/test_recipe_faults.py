"""The recipes under faults: checkpoints, resume, a killed run, pushes that cannot succeed."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import finetune_clip  # noqa: E402
import finetune_vit  # noqa: E402

# 30 training images, batch 8: 4 optimizer steps per epoch
SMALL = ["--shots_per_class", "3", "--max_eval_samples", "30", "--nc_train_samples", "20", "--per_device_train_batch_size", "8",
         "--per_device_eval_batch_size", "16", "--method", "layer", "--learning_rate", "1e-2"]


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vit")
    build_tiny_model("vit_cls").save_pretrained(path)
    return str(path)


def records(folder: Path) -> list[dict]:
    return json.loads((folder / "nc_history.json").read_text())["records"]


def test_recipe_checkpoints_keeps_best_by_train_nc1_and_resumes(tiny_vit, tmp_path):
    args = ["--model_name_or_path", tiny_vit, *SMALL, "--num_train_epochs", "3", "--eval_strategy", "epoch", "--save_strategy", "epoch",
            "--load_best_model_at_end", "--metric_for_best_model", "train_nc1"]
    first = finetune_vit.main([*args, "--output_dir", str(tmp_path / "a")])
    checkpoints = sorted(p.name for p in (tmp_path / "a").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]
    assert (tmp_path / "a" / "checkpoint-4" / "preprocessor_config.json").is_file()  # processing_class: saved with each checkpoint
    history = records(tmp_path / "a")
    assert [r["step"] for r in history] == [4, 8, 12]
    best = min(history, key=lambda r: r["train"]["nc1"])
    state = json.loads((tmp_path / "a" / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best['step']}")
    # the best model is the one loaded at the end: its train NC1 is the best one
    assert first["train_nc1"] == pytest.approx(best["train"]["nc1"], rel=1e-6)

    second = finetune_vit.main([*args, "--output_dir", str(tmp_path / "b"), "--resume_from_checkpoint", str(tmp_path / "a" / "checkpoint-4")])
    resumed = records(tmp_path / "b")
    assert [r["step"] for r in resumed] == [4, 8, 12]
    for a, b in zip(history, resumed):
        for split in ("train", "eval"):
            assert b[split]["nc1"] == pytest.approx(a[split]["nc1"], rel=1e-6), (a["step"], split)
    assert second["train_nc1"] == pytest.approx(first["train_nc1"], rel=1e-6)


def test_resume_from_last_without_a_checkpoint_is_an_error(tiny_vit, tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):
        finetune_vit.main(["--model_name_or_path", tiny_vit, *SMALL, "--max_steps", "1", "--output_dir", str(tmp_path),
                           "--resume_from_checkpoint", "last"])


def test_clip_recipe_saves_a_checkpoint(tmp_path):
    finetune_clip.main(["--output_dir", str(tmp_path), *SMALL, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
                        "--eval_strategy", "no"])
    assert (tmp_path / "checkpoint-2" / "trainer_state.json").is_file()


KILL_AFTER_SAVE = """
import os, signal, sys
sys.path.insert(0, {recipes!r})
import common, finetune_vit
from transformers import TrainerCallback

class KillAfterSave(TrainerCallback):  # the checkpoint is complete when on_save runs
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == {step}:
            os.kill(os.getpid(), signal.SIGKILL)

class Trainer(common.RecipeTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(KillAfterSave())

common.RecipeTrainer = Trainer
finetune_vit.main(sys.argv[1:])
"""


def run_recipe_process(args: list[str], kill_at_step: int = -1) -> subprocess.CompletedProcess:
    """finetune_vit in a fresh process (1 thread: the same float reductions in every run), killed after a save."""
    script = KILL_AFTER_SAVE.format(recipes=str(ROOT / "recipes"), step=kill_at_step)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.slow
def test_run_killed_after_a_checkpoint_resumes_to_the_same_result(tiny_vit, tmp_path):
    args = ["--model_name_or_path", tiny_vit, *SMALL, "--max_steps", "6", "--eval_strategy", "steps", "--eval_steps", "2",
            "--save_strategy", "steps", "--save_steps", "2"]
    done = run_recipe_process([*args, "--output_dir", str(tmp_path / "reference")])
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = run_recipe_process([*args, "--output_dir", str(killed)], kill_at_step=4)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (killed / "checkpoint-4" / "trainer_state.json").is_file() and not (killed / "summary.json").exists()

    resumed = run_recipe_process([*args, "--output_dir", str(killed), "--resume_from_checkpoint", "last"])  # the newest: checkpoint-4
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = records(tmp_path / "reference"), records(killed)
    assert [r["step"] for r in got] == [r["step"] for r in expected] == [2, 4, 6]
    for a, b in zip(expected, got):
        for split in ("train", "eval"):
            for key, value in a[split].items():
                assert b[split][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (a["step"], split, key)
    reference_summary = json.loads((tmp_path / "reference" / "summary.json").read_text())
    resumed_summary = json.loads((killed / "summary.json").read_text())
    for key in ("test_accuracy", "train_nc1", "eval_nc1"):
        assert resumed_summary[key] == pytest.approx(reference_summary[key], rel=1e-6), key


@pytest.fixture
def hub_online(monkeypatch):
    """The Hub looks online with an accepted token (nothing is sent: the push itself is replaced)."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self, *a, **k: {"name": "me"})


@pytest.mark.parametrize("problem", ["offline", "no_token", "bad_repo_id"])
def test_push_to_hub_that_cannot_succeed_fails_before_training(problem, tiny_vit, tmp_path, monkeypatch):
    import huggingface_hub

    args = ["--model_name_or_path", tiny_vit, *SMALL, "--max_steps", "2", "--output_dir", str(tmp_path), "--push_to_hub",
            "--hub_model_id", "me/tiny"]
    if problem != "offline":
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    if problem == "no_token":
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored token either
        monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
        monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf_home" / "stored_tokens"))
    if problem == "bad_repo_id":
        args += ["--hub_model_id", "me/not/valid", "--hub_token", "hf_x"]
    message = {"offline": "HF_HUB_OFFLINE", "no_token": "token", "bad_repo_id": "me/not/valid"}[problem]
    with pytest.raises(ValueError, match=message):
        finetune_vit.main(args)
    assert not (tmp_path / "nc_history.json").exists() and not (tmp_path / "adapter").exists()  # nothing was trained


def test_failed_push_after_training_still_writes_the_summary(tiny_vit, tmp_path, monkeypatch, hub_online):
    from hf_nc import cards

    def refuse(*args, **kwargs):
        raise ConnectionError("the Hub went away")

    monkeypatch.setattr(cards, "push_adapter", refuse)
    args = ["--model_name_or_path", tiny_vit, *SMALL, "--max_steps", "2", "--output_dir", str(tmp_path), "--push_to_hub",
            "--hub_model_id", "me/tiny", "--hub_token", "hf_x"]
    with pytest.raises(RuntimeError, match="the Hub went away") as raised:
        finetune_vit.main(args)
    assert "summary.json" in str(raised.value)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "the Hub went away" in summary["hub_error"] and summary["train_nc1"] == summary["train_nc1"]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
