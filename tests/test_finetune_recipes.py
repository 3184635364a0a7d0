"""The fine-tuning recipes: every method for a few steps, CLIP offline, 2 CPU processes == 1, push."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import finetune_clip  # noqa: E402
import finetune_vit  # noqa: E402

QUICK = ["--max_steps", "2", "--shots_per_class", "3", "--max_eval_samples", "30", "--nc_train_samples", "20",
         "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--eval_strategy", "steps", "--eval_steps", "2"]
METHODS = {
    "linear_probe": [],
    "full": [],
    "lora": ["--lora_r", "2", "--lora_target_modules", "q_proj,v_proj"],
    "layer": ["--layers=-1,-2", "--part", "mlp"],  # a value starting with "-" needs the = form
    "scl": ["--layer", "-2", "--scl_combine", "concat"],
    "heads": ["--heads", "3:0,1;-2:all"],
}
NC_KEYS = ("train_nc1", "train_nc2_etf", "train_cdnv", "eval_nc1", "eval_nc2_etf", "eval_nc3", "eval_cdnv")


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vit")
    build_tiny_model("vit_cls").save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_runs_through_the_recipe(method, tiny_vit, tmp_path, capsys):
    summary = finetune_vit.main(["--model_name_or_path", tiny_vit, "--output_dir", str(tmp_path), "--method", method, *QUICK, *METHODS[method]])
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["method"] == method and saved["num_labels"] == 10
    for key in ("test_accuracy", "train_nc1", "eval_nc1"):
        assert saved[key] == pytest.approx(summary[key]) and saved[key] == saved[key]  # not NaN
    assert 0 < saved["trainable_params"] <= saved["total_params"]
    assert saved["adapter_bytes"] == sum(f.stat().st_size for f in (tmp_path / "adapter").rglob("*") if f.is_file()) > 0
    assert f"{saved['trainable_params']:,}" in printed and "train NC1" in printed
    assert (tmp_path / "nc_history.json").is_file() and (tmp_path / "nc1_history.png").is_file()
    if method == "full":
        assert saved["trainable_percent"] == 100.0
    else:
        assert saved["trainable_percent"] < 100.0
    if method not in ("full", "linear_probe"):
        assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_scl_adapter_reloads_with_the_same_outputs(tiny_vit, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    finetune_vit.main(["--model_name_or_path", tiny_vit, "--output_dir", str(tmp_path), "--method", "scl", "--layer", "-2", *QUICK])
    base = AutoModelForImageClassification.from_pretrained(tiny_vit, num_labels=10, ignore_mismatched_sizes=True)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    history = json.loads((tmp_path / "nc_history.json").read_text())["records"]
    assert history[-1]["step"] == 2 and "train" in history[-1] and "eval" in history[-1]
    with torch.no_grad():
        assert loaded(pixel_values=torch.randn(2, 3, 16, 16)).logits.shape == (2, 10)


def test_clip_recipe_runs_offline(tmp_path):
    summary = finetune_clip.main(["--output_dir", str(tmp_path), "--method", "lora", *QUICK])
    assert summary["model"].endswith("random_clip_base") and (tmp_path / "random_clip_base" / "config.json").is_file()
    assert summary["eval_nc1"] == summary["eval_nc1"] and summary["trainable_percent"] < 100


def test_push_to_hub_uses_hf_nc_cards(tiny_vit, tmp_path, monkeypatch):
    import huggingface_hub

    cards = pytest.importorskip("hf_nc.cards")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the recipe checks it before training
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self, *a, **k: {"name": "me"})
    pushed = {}
    # the image processor goes in push_adapter's one commit, never in a second push_to_hub
    monkeypatch.setattr(cards, "push_adapter", lambda model, repo_id, card, **kw: pushed.update(repo=repo_id, card=str(card), processor=kw["image_processor"] is not None and repo_id) or "https://hub/commit/1")
    from transformers.image_processing_utils import BaseImageProcessor

    monkeypatch.setattr(BaseImageProcessor, "push_to_hub", lambda self, repo_id, **kw: pushed.update(second_commit=repo_id))
    summary = finetune_vit.main(["--model_name_or_path", tiny_vit, "--output_dir", str(tmp_path), "--method", "heads", "--heads=-1:0",
                                 "--push_to_hub", "--hub_model_id", "me/tiny-heads", "--hub_token", "hf_x", *QUICK])
    assert pushed["repo"] == pushed["processor"] == "me/tiny-heads" and summary["hub_commit"] == "https://hub/commit/1"
    assert "second_commit" not in pushed
    assert "nc1" in pushed["card"].lower() and (tmp_path / "adapter" / "README.md").read_text() == pushed["card"]


@pytest.mark.slow
def test_two_cpu_processes_give_the_same_nc_metrics(tiny_vit, tmp_path):
    # learning rate 0: the model stays the same, so the numbers must agree however the data is split
    args = ["--model_name_or_path", tiny_vit, "--method", "scl", "--layer", "-2", "--learning_rate", "0", "--max_steps", "1",
            "--shots_per_class", "7", "--max_eval_samples", "45", "--nc_train_samples", "41", "--per_device_train_batch_size", "8",
            "--per_device_eval_batch_size", "8", "--eval_strategy", "steps", "--eval_steps", "1", "--nc_layers"]
    one = finetune_vit.main([*args, "--output_dir", str(tmp_path / "one")])["metrics"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "recipes/accelerate_configs/cpu_2proc.yaml"),
           "--main_process_port", "29533", str(ROOT / "recipes/finetune_vit.py"), *args, "--output_dir", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())["metrics"]
    keys = [k for k in one if "_nc" in k or k.endswith("_cdnv")]
    assert set(NC_KEYS) <= set(keys) and "eval_nc1_block0" in keys
    for key in keys:
        assert two[key] == pytest.approx(one[key], rel=1e-9), key
    assert two["eval_accuracy"] == pytest.approx(one["eval_accuracy"])


def test_bf16_passes_through_training_arguments(tiny_vit, tmp_path):
    # CPU autocast in bf16 where CUDA is absent; NCStats accumulates the bf16 features in float64
    summary = finetune_vit.main(["--model_name_or_path", tiny_vit, "--output_dir", str(tmp_path), "--method", "layer", "--bf16", *QUICK])
    assert summary["train_nc1"] == summary["train_nc1"] and summary["eval_nc1"] == summary["eval_nc1"]


def test_builtin_stable_name_is_a_model_name_for_the_recipes(tmp_path):
    """``hf-nc/tiny-vit-fmnist`` (what adapters of the built-in model record as their base, and the
    cards print) names the built-in model for every recipe and ``load_model``, trailing slash or
    not; it used to go to the (offline) Hub and fail."""
    import nc_report

    from hf_nc.checkpoints import DEFAULT_MODEL, DEFAULT_MODEL_NAME
    from hf_nc.probe import load_model

    summary = finetune_vit.main(["--model_name_or_path", DEFAULT_MODEL_NAME + "/", "--output_dir", str(tmp_path / "ft"),
                                 "--method", "scl", *QUICK])
    config = json.loads((tmp_path / "ft" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == DEFAULT_MODEL_NAME and summary["test_accuracy"] >= 0
    report = nc_report.main(["--model_name_or_path", DEFAULT_MODEL_NAME, "--output_dir", str(tmp_path / "nc"),
                             "--shots_per_class", "5"])
    assert report
    model = load_model(DEFAULT_MODEL_NAME)
    assert model.config._name_or_path.rstrip("/") == DEFAULT_MODEL.rstrip("/")
