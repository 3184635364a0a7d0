"""NCTrainer's own model card: the hf-nc card (not PEFT's blank template), parsed by huggingface_hub."""

from __future__ import annotations

import json
import math

import pytest
from huggingface_hub import ModelCard
from peft import get_peft_model
from test_trainer_attacks import _dataset, _model, _trainer

import hf_nc
from hf_nc.cards import loading_snippet
from hf_nc.trainer import TRAIN_SUBSET_NC1

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def trained(tmp_path):
    data = _dataset([6, 6, 6])
    model = get_peft_model(_model(3), hf_nc.SCLConfig(layer=-2))
    trainer = _trainer(model, tmp_path, data, data, max_steps=2, eval_strategy="steps", eval_steps=1)
    trainer.train()
    return trainer


def _results(card):
    return {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results or []}


def test_create_model_card_writes_the_hf_nc_card(trained, tmp_path):
    last = [e for e in trained.state.log_history if "eval_loss" in e][-1]
    trained.create_model_card(finetuned_from="user/tiny-vit", dataset="user/tiny-data", model_name="tiny-scl")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == "user/tiny-vit" and card.data.library_name == "peft"
    results = _results(card)
    assert results[("validation", "nc1")] == pytest.approx(last["eval_nc1"])
    assert results[("train", "nc1")] == pytest.approx(last[TRAIN_SUBSET_NC1])
    assert ("validation", "train_subset_nc1") not in results and ("validation", "nc3") in results
    snippet = loading_snippet(card)
    assert "import hf_nc" in snippet and "AutoPeftModelForImageClassification" in snippet
    trainable, _ = trained.model.get_nb_trainable_parameters()
    assert f"{trainable:,}" in card.text or str(trainable) in json.dumps(card.data.to_dict())
    assert all(math.isfinite(v) for v in results.values())


def test_final_save_model_writes_the_card(trained, tmp_path):
    trained.model.peft_config["default"].base_model_name_or_path = "user/tiny-vit"
    trained.save_model(str(tmp_path / "final"))
    card = ModelCard.load(tmp_path / "final" / "README.md")
    assert card.data.base_model == "user/tiny-vit" and "import hf_nc" in loading_snippet(card)
    assert (tmp_path / "final" / "adapter_config.json").is_file()


def test_plain_model_keeps_transformers_card(tmp_path):
    data = _dataset([6, 6, 6])
    trainer = _trainer(_model(3), tmp_path, data, data, max_steps=1, eval_strategy="steps", eval_steps=1)
    trainer.train()
    trainer.create_model_card(model_name="tiny-full")
    card = ModelCard.load(tmp_path / "README.md")
    assert "Train Subset Nc1" in card.text and "| Nc1" in card.text  # both columns, neither lost


PUSH = r"""
import sys
sys.path.insert(0, sys.argv[2])
import torch, transformers as tf
from peft import get_peft_model
import hf_nc
from trainer_dist import collate, dataset

torch.manual_seed(0)
config = tf.ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                      image_size=16, patch_size=8, num_labels=3)
model = get_peft_model(tf.ViTForImageClassification(config), hf_nc.SCLConfig(layer=-2))
args = tf.TrainingArguments(output_dir=sys.argv[1], max_steps=1, eval_strategy="steps", eval_steps=1,
                            per_device_train_batch_size=8, remove_unused_columns=False, report_to="none", use_cpu=True,
                            disable_tqdm=True, save_strategy="no", hub_model_id="user/tiny-nc-trainer")
data = dataset([6, 6, 6], 0)
trainer = hf_nc.NCTrainer(model=model, args=args, train_dataset=data, eval_dataset=data, data_collator=collate,
                          nc_plots=False)
trainer.train()
print(trainer.push_to_hub(finetuned_from="user/tiny-vit", dataset="user/tiny-data"))
"""


@pytest.mark.slow
def test_push_to_hub_uploads_the_hf_nc_card(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from hub_server import FakeHub

    script = tmp_path / "push.py"
    script.write_text(PUSH)
    scripts = Path(__file__).parent / "scripts"
    with FakeHub() as hub:
        env = hub.client_env(tmp_path / "hf_home", base={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        proc = subprocess.run([sys.executable, str(script), str(tmp_path / "out"), str(scripts)], env=env,
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-4000:]
        files = hub.files("user/tiny-nc-trainer")
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(files)
    card = ModelCard(files["README.md"].decode())
    assert card.data.base_model == "user/tiny-vit" and "hf-nc" in card.data.tags
    results = _results(card)
    assert ("train", "nc1") in results and ("validation", "nc1") in results
    assert '"user/tiny-nc-trainer"' in loading_snippet(card)  # the pushed repo's id, not a placeholder
