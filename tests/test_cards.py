"""hf_nc.cards: card metadata and text from given numbers, parsed back with huggingface_hub; runnable snippet."""

from __future__ import annotations

import json
import re

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.repocard import metadata_load
from peft import get_peft_model

import hf_nc
from hf_nc.cards import (
    REPO_ID_PLACEHOLDER,
    adapter_card,
    adapter_card_from_model,
    loading_snippet,
    parse_metrics,
    save_adapter,
    trainable_percent,
)
from tiny_models import build_tiny_model, tiny_pixels

METRICS = {"eval_accuracy": 0.9123, "train_nc1": 0.1234, "eval_nc1": 0.85, "eval_nc2_etf": 0.3, "train_ncc_acc": 1.0,
           "eval_runtime": 3.2, "eval_samples_per_second": 99.0, "epoch": 3.0, "train_loss": 0.4,
           "note": "not a number"}


def _card(**kw):
    args = dict(base_model="org/tiny-vit", method="scl", method_config={"layer": -3, "combine": "add"},
                trainable_params=600_000, total_params=86_000_000, metrics=METRICS, dataset="org/tiny-data",
                repo_id="user/tiny-scl")
    args.update(kw)
    return adapter_card(**args)


def test_metadata_parses_back(tmp_path):
    card = _card(license="apache-2.0", tags=["vit"])
    card.save(tmp_path / "README.md")
    meta = metadata_load(tmp_path / "README.md")
    assert meta["base_model"] == "org/tiny-vit"
    assert meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "image-classification"
    assert meta["license"] == "apache-2.0"
    assert meta["tags"] == ["hf-nc", "neural-collapse", "scl-ft", "peft", "vit"]
    assert meta["datasets"] == ["org/tiny-data"]
    assert meta["hf_nc"]["peft_type"] == "HFNC_SCL"
    assert meta["hf_nc"]["settings"] == {"layer": -3, "combine": "add"}
    assert meta["hf_nc"]["trainable_params"] == 600_000 and meta["hf_nc"]["total_params"] == 86_000_000
    assert meta["hf_nc"]["metrics"] == {k: v for k, v in METRICS.items()
                                        if k in ("eval_accuracy", "train_nc1", "eval_nc1", "eval_nc2_etf",
                                                 "train_ncc_acc", "train_loss")}

    loaded = ModelCard.load(tmp_path / "README.md")  # strict: a malformed model-index raises here
    assert loaded.data.model_name == "tiny-scl"
    results = {(e.dataset_split, e.metric_type): e for e in loaded.data.eval_results}
    assert {k: e.metric_value for k, e in results.items()} == {
        ("test", "accuracy"): 0.9123, ("train", "nc1"): 0.1234, ("test", "nc1"): 0.85, ("test", "nc2_etf"): 0.3,
        ("train", "ncc_acc"): 1.0}  # timings, epoch, losses and non-numbers are not eval results
    e = results[("train", "nc1")]
    assert (e.task_type, e.dataset_type, e.dataset_name, e.metric_name) == (
        "image-classification", "org/tiny-data", "org/tiny-data", "NC1 (train)")
    assert loaded.data.metrics == ["accuracy"]


def test_body_has_method_params_metrics_and_loading(tmp_path):
    text = _card().text
    assert text.lstrip().startswith("# tiny-scl\n")
    assert ("An adapter for [`org/tiny-vit`](https://huggingface.co/org/tiny-vit), fine-tuned with **SCL FT** on "
            "[`org/tiny-data`](https://huggingface.co/datasets/org/tiny-data)") in text
    assert "hf_nc.SCLConfig(layer=-3, combine='add')" in text
    assert "| `layer` | `-3` |" in text
    assert "**600,000** of 86,000,000 parameters (600.00K of 86.00M, **0.70%**)" in text
    rows = re.findall(r"^\| (.+?) \| (\w+) \| ([\d.]+) \|$", text, re.M)
    assert ("Accuracy", "test", "0.9123") in rows and ("NC1", "train", "0.1234") in rows
    assert ("NC2-ETF", "test", "0.3000") in rows and ("Loss", "train", "0.4000") in rows
    assert not any("runtime" in r[0] or "epoch" in r[0].lower() for r in rows)
    snippet = loading_snippet(_card())
    assert snippet.index("import hf_nc") < snippet.index("PeftModel.from_pretrained")
    assert 'PeftModel.from_pretrained(base, "user/tiny-scl")' in snippet
    assert 'AutoModelForImageClassification.from_pretrained("org/tiny-vit")' in snippet
    assert "KeyError: 'HFNC_SCL'" in text  # why `import hf_nc` is needed
    assert "peft " + __import__("peft").__version__ in text


@pytest.mark.parametrize("trainable,total,expected", [
    (6387, 47094, "13.56%"), (600_000, 86_000_000, "0.70%"), (1234, 86_000_000, "0.0014%"), (5, 5, "100.00%"),
    (0, 10, "0.00%"), (999, 1_000_000, "0.10%"), (99, 100_000, "0.099%")])
def test_trainable_percent(trainable, total, expected):
    assert trainable_percent(trainable, total) == expected
    assert f"**{expected}**" in _card(trainable_params=trainable, total_params=total).text


@pytest.mark.parametrize("trainable,total", [(5, 4), (-1, 4), (0, 0)])
def test_bad_counts_raise(trainable, total):
    with pytest.raises(ValueError, match="trainable_params"):
        _card(trainable_params=trainable, total_params=total)


def test_method_names_and_configs():
    for method in ("scl", "SCL_FT", "HFNC_SCL", hf_nc.SCLConfig, hf_nc.SCLConfig(layer=1)):
        assert "scl-ft" in _card(method=method).data.tags
    assert "layer-ft" in _card(method="layer_ft", method_config={"layers": [-1], "part": "block"}).data.tags
    card = _card(method=hf_nc.HeadFTConfig(heads={-1: "all", 1: [0, 2]}), method_config=None)
    assert "hf_nc.HeadFTConfig(train_head=True, heads={-1: 'all', 1: [0, 2]}," in card.text
    lora = _card(method="LORA", method_config={"r": 8, "lora_alpha": 16, "peft_type": "LORA"})
    assert "lora" in lora.data.tags and "`r` | `8`" in lora.text and "import hf_nc" not in loading_snippet(lora)


def test_no_dataset_no_model_index_and_local_base(tmp_path):
    card = _card(dataset=None)
    assert card.data.eval_results is None and card.data.datasets is None
    assert card.data.get("hf_nc")["metrics"]["eval_accuracy"] == 0.9123  # still in the card
    assert "| Accuracy | test | 0.9123 |" in card.text
    with pytest.warns(UserWarning, match="local path"):
        local = _card(base_model=str(tmp_path))
    assert local.data.base_model is None and str(tmp_path) in loading_snippet(local)
    assert "No metrics were reported." in _card(metrics=None).text


def test_parse_metrics_splits():
    got = {(m.split, m.type): m.value for m in parse_metrics(
        {"accuracy": 0.5, "test_accuracy": 0.6, "validation_nc1": 2.0, "val_cdnv": 0.1, "eval_nc3": 0.2,
         "train_runtime": 1.0, "train_steps_per_second": 2.0, "total_flos": 5, "flag": True,
         "eval_ncc_acc": torch.tensor(0.75)}, eval_split="validation")}
    assert got == {("validation", "accuracy"): 0.5, ("test", "accuracy"): 0.6, ("validation", "nc1"): 2.0,
                   ("validation", "cdnv"): 0.1, ("validation", "nc3"): 0.2, ("validation", "ncc_acc"): 0.75}


def test_loading_snippet_runs_against_local_adapter(tmp_path):
    """The card's snippet, with the Hub ids swapped for local dirs, loads the adapter and reproduces its logits."""
    base = build_tiny_model("vit_cls").eval()
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, hf_nc.SCLConfig(layer=1)).eval()
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
        expected = model(pixel_values=tiny_pixels()).logits
        with model.disable_adapter():
            assert (model(pixel_values=tiny_pixels()).logits - expected).abs().max() > 1e-3
    card = adapter_card_from_model(model, "org/tiny-vit", METRICS, "org/tiny-data")
    trainable, total = model.get_nb_trainable_parameters()
    assert card.data.get("hf_nc")["trainable_params"] == trainable and card.data.get("hf_nc")["total_params"] == total
    assert REPO_ID_PLACEHOLDER in loading_snippet(card)
    save_adapter(model, tmp_path / "adapter", card)
    assert model.peft_config["default"].base_model_name_or_path != "org/tiny-vit"  # left unchanged...
    saved_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved_config["base_model_name_or_path"] == "org/tiny-vit"  # ...but the saved adapter names the base
    saved = ModelCard.load(tmp_path / "adapter" / "README.md")  # our card replaced PEFT's blank one
    assert saved.data.base_model == "org/tiny-vit" and "scl-ft" in saved.data.tags

    snippet = loading_snippet(saved)
    snippet = snippet.replace('"org/tiny-vit"', repr(str(tmp_path / "base")))
    snippet = snippet.replace(f'"{REPO_ID_PLACEHOLDER}"', repr(str(tmp_path / "adapter")))
    scope: dict = {}
    exec(compile(snippet, "card-snippet", "exec"), scope)
    with torch.no_grad():
        got = scope["model"](pixel_values=tiny_pixels()).logits
    assert (got - expected).abs().max() < 1e-6
