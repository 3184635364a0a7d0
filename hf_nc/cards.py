"""Model cards for hf-nc adapters shared on the Hugging Face Hub, and pushing them.

A card is a ``huggingface_hub.ModelCard``: Hub metadata (``base_model``, ``library_name: peft``,
``tags``, ``datasets``, ``model-index`` with accuracy and the NC metrics as evaluation results, plus an
``hf_nc`` block with the method, its settings, parameter counts and all metrics) and a Markdown body
(base model, method and settings, trainable parameters, a metrics table, and how to load the adapter).

>>> card = adapter_card("google/vit-base-patch16-224-in21k", "scl", {"layer": -3}, 600_000, 86_000_000,
...                     {"eval_accuracy": 0.91, "train_nc1": 0.12, "eval_nc1": 0.85}, dataset="cifar10")
>>> card.save("out/README.md")                                    # local output, or:
>>> push_adapter(peft_model, "me/vit-scl-cifar10", card)          # adapter files + card, one commit

Metrics: keys are metric names (``accuracy``, ``nc1``, ``nc2_etf``, ``nc2_equinorm``, ``nc2_equiangle``,
``nc3``, ``ncc_acc``, ``cdnv``, ``loss``, or any other), optionally prefixed by the split they were measured
on, as ``transformers.Trainer`` reports them: ``train_`` (split ``train``), ``eval_`` (``eval_split``,
default ``test``), ``test_``, ``validation_`` / ``val_``; no prefix means ``eval_split``. Timing keys
(``*_runtime``, ``*_per_second``, ``epoch``, ``step``, ``total_flos``) and non-numbers are dropped.
Each (split, metric) except losses becomes a ``model-index`` result of task ``image-classification`` on ``dataset``
(the Hub's model-index needs a dataset: without one, metrics go to the table and the ``hf_nc`` block only).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

#: stands for the adapter's own repo id in a card's loading snippet; ``push_adapter`` fills it in
REPO_ID_PLACEHOLDER = "<namespace>/<adapter-repo>"

# peft_type -> (tag, title, config class, what trains)
_METHODS = {
    "HFNC_LAYER_FT": ("layer-ft", "Layer FT", "LayerFTConfig",
                      "fine-tunes whole chosen transformer blocks (or only their attention / MLP parts)"),
    "HFNC_SCL": ("scl-ft", "SCL FT", "SCLConfig",
                 "fine-tunes one intermediate block and adds a skip connection from it to the classifier input "
                 "(the skip connection lets that block's features collapse on the downstream data while the rest "
                 "of the backbone stays frozen)"),
    "HFNC_HEAD_FT": ("head-ft", "Head FT", "HeadFTConfig",
                     "fine-tunes only the chosen attention heads' slices of the q/k/v/o projections"),
}
_ALIASES = {
    **{k.lower(): k for k in _METHODS},
    "layer_ft": "HFNC_LAYER_FT", "layer-ft": "HFNC_LAYER_FT", "layerft": "HFNC_LAYER_FT",
    "layerftconfig": "HFNC_LAYER_FT",
    "scl": "HFNC_SCL", "scl_ft": "HFNC_SCL", "scl-ft": "HFNC_SCL", "sclft": "HFNC_SCL", "sclconfig": "HFNC_SCL",
    "head_ft": "HFNC_HEAD_FT", "head-ft": "HFNC_HEAD_FT", "headft": "HFNC_HEAD_FT", "headftconfig": "HFNC_HEAD_FT",
}
# PeftConfig's own fields and the fields our configs derive from the base model: not "settings"
_NOT_SETTINGS = {"auto_mapping", "base_model_name_or_path", "inference_mode", "peft_type", "peft_version", "revision",
                 "task_type", "target_modules", "modules_to_save"}

_METRIC_NAMES = {
    "accuracy": "Accuracy", "nc1": "NC1", "nc2_etf": "NC2-ETF", "nc2_equinorm": "NC2-equinorm",
    "nc2_equiangle": "NC2-equiangle", "nc3": "NC3", "ncc_acc": "NCC accuracy", "cdnv": "CDNV", "loss": "Loss",
    "f1": "F1", "top5_accuracy": "Top-5 accuracy",
}
_SPLIT_PREFIXES = (("train_", "train"), ("eval_", None), ("test_", "test"), ("validation_", "validation"),
                   ("val_", "validation"))
_SKIP = re.compile(r"(runtime|per_second|^epoch$|^step$|_step$|total_flos|^learning_rate$|^grad_norm$)")


@dataclasses.dataclass(frozen=True)
class _Metric:
    key: str  # as given
    split: str
    type: str  # metric id, split prefix removed
    value: float | int

    @property
    def name(self) -> str:
        return f"{_METRIC_NAMES.get(self.type, self.type)} ({self.split})"


def _method_info(method: Any) -> tuple[str, str, str, str | None, str | None]:
    """-> (peft_type, tag, title, config class name or None, description or None)."""
    if isinstance(method, type):  # a config class
        method = getattr(method, "PEFT_TYPE", None) or method.__name__
    elif getattr(method, "peft_type", None) is not None:  # a PeftConfig
        method = method.peft_type
    name = str(getattr(method, "value", method))
    peft_type = _ALIASES.get(name.lower(), name)
    if peft_type in _METHODS:
        tag, title, cls, what = _METHODS[peft_type]
        return peft_type, tag, title, cls, what
    return peft_type, re.sub(r"[^a-z0-9]+", "-", peft_type.lower()).strip("-"), peft_type, None, None


def _config_dict(method_config: Any) -> dict:
    if method_config is None:
        return {}
    if hasattr(method_config, "to_dict"):
        return dict(method_config.to_dict())
    if dataclasses.is_dataclass(method_config):
        return dataclasses.asdict(method_config)
    return dict(method_config)


def _plain(value: Any) -> Any:
    """JSON/YAML-safe copy: numbers from numpy/torch become Python numbers, sets/tuples become lists."""
    if isinstance(value, Mapping):
        return {(k if isinstance(k, str) else str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in (sorted(value) if isinstance(value, (set, frozenset)) else value)]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return value.item()
    if hasattr(value, "value") and isinstance(getattr(value, "value"), str):  # str enums
        return value.value
    return value


def _py_literal(value: Any) -> str:
    """Python source for a setting; JSON's string keys that are ints (HeadFT's heads) become ints again."""
    if isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            key = int(k) if isinstance(k, str) and re.fullmatch(r"-?\d+", k) else k
            items.append(f"{key!r}: {_py_literal(v)}")
        return "{" + ", ".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_py_literal(v) for v in value) + "]"
    return repr(value)


def _settings(config: dict, peft_type: str) -> dict:
    settings = {}
    for key, value in config.items():
        if key in _NOT_SETTINGS or key.startswith("base_"):
            continue
        if peft_type not in _METHODS and value is None:
            continue
        settings[key] = value
    return settings


def _base_record(config: dict) -> str | None:
    parts = []
    if config.get("base_model_type"):
        parts.append(f"`{config['base_model_type']}`")
    if config.get("base_num_layers"):
        parts.append(f"{config['base_num_layers']} blocks")
    if config.get("base_hidden_size"):
        parts.append(f"width {config['base_hidden_size']}")
    if config.get("base_num_heads"):
        parts.append(f"{config['base_num_heads']} heads")
    return ", ".join(parts) or None


def parse_metrics(metrics: Mapping[str, Any] | None, eval_split: str = "test") -> list[_Metric]:
    """Splits ``{"train_nc1": .., "eval_accuracy": ..}`` into (split, metric) entries; see the module doc."""
    out = []
    for key, value in (metrics or {}).items():
        value = _plain(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or _SKIP.search(key):
            continue
        split, mtype = eval_split, key
        for prefix, prefix_split in _SPLIT_PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                split, mtype = prefix_split or eval_split, key[len(prefix):]
                break
        out.append(_Metric(key, split, mtype, value))
    return out


def _fmt(value: float | int) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 else f"{value:.4g}"


def _human(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def trainable_percent(trainable_params: int, total_params: int) -> str:
    """``100 * trainable / total`` as text: two decimals, or two significant digits below 0.1%."""
    pct = 100.0 * trainable_params / total_params
    return f"{pct:.2f}%" if pct >= 0.1 or pct == 0 else f"{pct:#.2g}%"


def _is_local_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.isdir(name) or name.count("/") > 1


def _snippet(base_model: str, repo_id: str, base_class: str, peft_type: str, load_kwargs: Mapping | None) -> str:
    kwargs = "".join(f", {k}={v!r}" for k, v in (load_kwargs or {}).items())
    register = (f"import hf_nc  # registers hf-nc's PEFT methods ({peft_type}) with PEFT: import it before loading\n"
                if peft_type in _METHODS else "")
    return f'''{register}from peft import PeftModel
from transformers import {base_class}

base = {base_class}.from_pretrained("{base_model}"{kwargs})
model = PeftModel.from_pretrained(base, "{repo_id}").eval()
'''


def adapter_card(
    base_model: str,
    method: Any,
    method_config: Mapping[str, Any] | Any,
    trainable_params: int,
    total_params: int,
    metrics: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    *,
    library_name: str = "peft",
    repo_id: str | None = None,
    model_name: str | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    eval_split: str = "test",
    base_model_class: str = "AutoModelForImageClassification",
    load_kwargs: Mapping[str, Any] | None = None,
    pipeline_tag: str | None = "image-classification",
    license: str | None = None,
    tags: Sequence[str] = (),
    extra: str = "",
) -> ModelCard:
    """A Hub model card for an hf-nc adapter.

    Args:
        base_model: Hub id of the base model (a local path is written into the loading snippet but left out
            of the ``base_model`` metadata, which the Hub requires to be a model id).
        method: the PEFT method: a config (``hf_nc.SCLConfig(...)``), its class, its ``peft_type``
            (``"HFNC_SCL"``), or a short name (``"layer_ft"``, ``"scl"``, ``"head_ft"``). Other PEFT methods
            (``"LORA"``) are accepted and described generically.
        method_config: the method's settings: ``config.to_dict()``, the saved ``adapter_config.json`` or the
            config itself.
        trainable_params / total_params: as ``PeftModel.get_nb_trainable_parameters()`` reports them.
        metrics: ``{"eval_accuracy": 0.91, "train_nc1": 0.12, ...}`` (see the module doc for the keys).
        dataset: Hub id of the fine-tuning dataset (``datasets`` metadata and the model-index dataset).
        library_name: the Hub ``library_name`` (``peft``: the Hub then shows PEFT's loading snippet).
        repo_id: the adapter's repo, for the loading snippet (default: ``REPO_ID_PLACEHOLDER``, which
            ``push_adapter`` replaces).
        model_name: the card's title and model-index name (default: the repo name, or "<method> adapter").
        dataset_name / dataset_config: pretty name and config of ``dataset`` for the model-index.
        eval_split: the split that un-prefixed and ``eval_``-prefixed metrics were measured on.
        base_model_class / load_kwargs: how the loading snippet loads the base, e.g.
            ``load_kwargs={"num_labels": 10, "ignore_mismatched_sizes": True}`` when the adapter's head has
            another number of classes than the base's.
        pipeline_tag, license, tags: more Hub metadata (``tags`` are added to ours).
        extra: Markdown appended to the card body (training details, links, ...).

    Returns:
        a ``huggingface_hub.ModelCard``: ``.save(path)``, ``.push_to_hub(repo_id)``, ``.data``, ``.text``.
    """
    if not isinstance(trainable_params, int) or not isinstance(total_params, int):
        trainable_params, total_params = int(trainable_params), int(total_params)
    if total_params <= 0 or not 0 <= trainable_params <= total_params:
        raise ValueError(f"need 0 <= trainable_params <= total_params and total_params > 0, got "
                         f"{trainable_params} and {total_params}")
    peft_type, method_tag, title, config_cls, what = _method_info(method)
    if method_config is None and hasattr(method, "to_dict"):
        method_config = method
    config = _plain(_config_dict(method_config))
    settings = _settings(config, peft_type)
    parsed = parse_metrics(metrics, eval_split)
    pct = trainable_percent(trainable_params, total_params)
    base_is_hub_id = not _is_local_path(base_model)
    if not base_is_hub_id:
        warnings.warn(f"base_model {base_model!r} looks like a local path: it is left out of the card's "
                      "`base_model` metadata (the Hub expects a model id)", stacklevel=2)
    name = model_name or (repo_id.rstrip("/").split("/")[-1] if repo_id else f"{title} adapter for {base_model}")

    eval_results = None
    if dataset and parsed:
        eval_results = [
            EvalResult(task_type="image-classification", task_name="Image Classification", dataset_type=dataset,
                       dataset_name=dataset_name or dataset, dataset_config=dataset_config, dataset_split=m.split,
                       metric_type=m.type, metric_value=m.value, metric_name=m.name)
            for m in parsed if m.type != "loss" and (isinstance(m.value, int) or math.isfinite(m.value))
        ] or None
    all_tags = list(dict.fromkeys(["hf-nc", "neural-collapse", method_tag, "peft", *tags]))
    data = ModelCardData(
        base_model=base_model if base_is_hub_id else None,
        library_name=library_name,
        pipeline_tag=pipeline_tag,
        license=license,
        tags=all_tags,
        datasets=[dataset] if dataset else None,
        metrics=sorted({m.type for m in parsed if m.type in ("accuracy", "f1")}) or None,
        model_name=name if eval_results else None,
        eval_results=eval_results,
        hf_nc={
            "method": method_tag,
            "peft_type": peft_type,
            "settings": settings,
            "trainable_params": trainable_params,
            "total_params": total_params,
            "trainable_percent": round(100.0 * trainable_params / total_params, 6),
            "metrics": {m.key: m.value for m in parsed},
        },
    )

    # -- body ------------------------------------------------------------------------------------
    base_link = f"[`{base_model}`](https://huggingface.co/{base_model})" if base_is_hub_id else f"`{base_model}`"
    data_text = f" on [`{dataset}`](https://huggingface.co/datasets/{dataset})" if dataset else ""
    lines = [f"# {name}", ""]
    lines.append(f"An adapter for {base_link}, fine-tuned with **{title}**{data_text} using "
                 "hf-nc (neural-collapse guided transfer learning of vision transformers; "
                 "Li et al., *Understanding and Improving Transfer Learning of Deep Models via Neural Collapse*, "
                 "TMLR 2024). It holds only the tuned parameters: load it on top of the base model.")
    lines += ["", "## Method", ""]
    if what:
        lines.append(f"{title} {what}; the classification head, when the model has one, is trained and saved with "
                     "the adapter unless `train_head=False`. Everything below the first tuned block stays frozen.")
    else:
        lines.append(f"PEFT method `{peft_type}`.")
    lines.append("")
    if config_cls:
        call = ", ".join(f"{k}={_py_literal(v)}" for k, v in settings.items())
        lines += ["```python", f"hf_nc.{config_cls}({call})", "```", ""]
    if settings:
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| `{k}` | `{_py_literal(v)}` |" for k, v in settings.items()]
        lines.append("")
    record = _base_record(config)
    if record:
        lines += [f"The adapter records its base ({record}) and refuses to load into another one.", ""]
    lines += ["## Trainable parameters", "",
              f"**{trainable_params:,}** of {total_params:,} parameters ({_human(trainable_params)} of "
              f"{_human(total_params)}, **{pct}**) are trained and stored in this adapter; the other "
              f"{total_params - trainable_params:,} come from the base model.", ""]
    lines += ["## Results", ""]
    if parsed:
        lines += ["| metric | split | value |", "|---|---|---|"]
        lines += [f"| {_METRIC_NAMES.get(m.type, m.type)} | {m.split} | {_fmt(m.value)} |" for m in parsed]
        lines.append("")
        if any(m.type.startswith("nc") or m.type == "cdnv" for m in parsed):
            lines += ["Neural-collapse (NC) metrics are measured on the penultimate features (the classifier's "
                      "input); lower NC1, NC2 and CDNV mean more collapsed features: NC1 = tr(Σ_W Σ_B⁺)/K "
                      "(within-class variability relative to between-class), NC2 the distance of the class means "
                      "from a simplex ETF, NC3 the misalignment of classifier and class means, NCC accuracy the "
                      "nearest-class-mean accuracy. The paper finds that more collapse on the downstream "
                      "*training* data goes with higher downstream test accuracy.", ""]
    else:
        lines += ["No metrics were reported.", ""]
    snippet = _snippet(base_model, repo_id or REPO_ID_PLACEHOLDER, base_model_class, peft_type, load_kwargs)
    lines += ["## How to load", "", "```bash", "pip install hf-nc  # brings peft and transformers", "```", "",
              "```python", snippet.rstrip("\n"), "```", ""]
    if config_cls:
        lines += [f"`import hf_nc` is needed: this adapter's `adapter_config.json` says `\"peft_type\": "
                  f"\"{peft_type}\"`, a method that is not built into PEFT. Importing `hf_nc` registers hf-nc's "
                  "methods with PEFT; without it `PeftModel.from_pretrained` fails with "
                  f"`KeyError: '{peft_type}'`.", ""]
    lines += ["## Framework versions", "", *_versions(), ""]
    if extra:
        lines += [extra.strip("\n"), ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _versions() -> list[str]:
    out = []
    for dist in ("hf-nc", "peft", "transformers", "torch", "huggingface_hub"):
        try:
            from importlib.metadata import version

            out.append(f"- {dist} {version(dist)}")
        except Exception:
            pass
    return out


def loading_snippet(card: ModelCard) -> str:
    """The Python loading snippet of a card made by ``adapter_card``."""
    match = re.search(r"## How to load.*?```python\n(.*?)```", card.text, re.S)
    if not match:
        raise ValueError("the card has no loading snippet")
    return match.group(1)


def adapter_card_from_model(model, base_model: str | None = None, metrics: Mapping[str, Any] | None = None,
                            dataset: str | None = None, adapter_name: str = "default", **kwargs) -> ModelCard:
    """``adapter_card`` with the method, settings and parameter counts read from a ``PeftModel``.

    ``base_model`` defaults to the adapter config's ``base_model_name_or_path``; ``kwargs`` go to
    ``adapter_card``.
    """
    config = model.peft_config[adapter_name]
    base_model = base_model or config.base_model_name_or_path
    if not base_model:
        raise ValueError("pass base_model: the adapter config does not name its base model")
    trainable, total = model.get_nb_trainable_parameters()
    return adapter_card(base_model, config, config.to_dict(), trainable, total, metrics, dataset, **kwargs)


def _with_repo_id(card: ModelCard, repo_id: str) -> ModelCard:
    if REPO_ID_PLACEHOLDER not in card.content:
        return card
    return ModelCard(card.content.replace(REPO_ID_PLACEHOLDER, repo_id))


def save_adapter(model, save_directory: str | os.PathLike, card: ModelCard, **save_kwargs) -> Path:
    """``model.save_pretrained(dir)`` with ``card`` as the ``README.md`` (in place of PEFT's blank template).

    When the card names a Hub ``base_model``, the saved ``adapter_config.json`` records it as
    ``base_model_name_or_path`` (instead of, say, the local directory the base was loaded from), so that
    ``AutoPeftModel*.from_pretrained(adapter)`` finds the base; the model's own config is left unchanged.
    """
    save_directory = Path(save_directory)
    if all(str(getattr(c, "peft_type", "")) in _METHODS for c in getattr(model, "peft_config", {}).values()):
        # our methods never touch token embeddings: skip PEFT's vocab-size check (a Hub request for the base)
        save_kwargs.setdefault("save_embedding_layers", False)
    base_model = card.data.base_model if isinstance(card.data.base_model, str) else None
    configs = list(getattr(model, "peft_config", {}).values()) if base_model else []
    saved = [c.base_model_name_or_path for c in configs]
    try:
        for c in configs:
            c.base_model_name_or_path = base_model
        model.save_pretrained(str(save_directory), **save_kwargs)
    finally:
        for c, value in zip(configs, saved):
            c.base_model_name_or_path = value
    card.save(save_directory / "README.md")
    return save_directory


def push_adapter(model, repo_id: str, card: ModelCard | None = None, *, private: bool = False,
                 token: str | None = None, commit_message: str | None = None, revision: str | None = None) -> str:
    """Pushes the adapter (``adapter_config.json``, ``adapter_model.safetensors``) and its card in ONE commit.

    ``card`` defaults to ``adapter_card_from_model(model)``; a ``REPO_ID_PLACEHOLDER`` in it becomes
    ``repo_id``. The repo is created if needed (``private`` applies only then). Only the adapter is
    uploaded, never the base model's weights. Returns the commit URL.

    One commit (not ``model.push_to_hub`` then ``card.push_to_hub``) so the repo never shows PEFT's blank
    card and loads consistently at every revision.
    """
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    card = _with_repo_id(card if card is not None else adapter_card_from_model(model), repo_id)
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(model, tmp, card)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision,
                                 commit_message=commit_message or "Upload hf-nc adapter and model card")
    return info.commit_url
