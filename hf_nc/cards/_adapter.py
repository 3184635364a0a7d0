"""The model card of an hf-nc adapter: ``ModelCardData`` metadata (with a model-index per split) + a template."""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ._common import builtin_model_name, dataset_text, hub_dataset_id, install_command, is_local_path, render_card
from ._common import versions as _versions

#: stands for the adapter's own repo id in a card's loading snippets; ``push_adapter`` fills it in
REPO_ID_PLACEHOLDER = "<namespace>/<adapter-repo>"

#: the loader that reads the base from the adapter config and registers hf-nc's methods first
AUTO_LOADER = "AutoPeftModelForImageClassification"

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
# (``id2label``: the task's class names, shown apart)
_NOT_SETTINGS = {"auto_mapping", "base_model_name_or_path", "inference_mode", "peft_type", "peft_version", "revision",
                 "task_type", "target_modules", "modules_to_save", "id2label"}

_METRIC_NAMES = {
    "accuracy": "Accuracy", "nc1": "NC1", "nc2_etf": "NC2-ETF", "nc2_equinorm": "NC2-equinorm",
    "nc2_equiangle": "NC2-equiangle", "nc3": "NC3", "ncc_acc": "NCC accuracy", "cdnv": "CDNV", "loss": "Loss",
    "f1": "F1", "top5_accuracy": "Top-5 accuracy",
}
# (key prefix, split; None = the eval split). First match wins, so the train-subset keys NCTrainer reports
# under ``eval_`` (``eval_train_subset_nc1``, see hf_nc.trainer) come before ``eval_``.
_SPLIT_PREFIXES = (("eval_train_subset_", "train"), ("test_train_subset_", "train"), ("train_subset_", "train"),
                   ("train_", "train"), ("eval_", None), ("test_", "test"), ("validation_", "validation"),
                   ("val_", "validation"))
_SPLIT_ORDER = ("train", "validation", "test")
_SKIP = re.compile(r"(runtime|per_second|^epoch$|^step$|_step$|total_flos|^learning_rate$|^grad_norm$)")
_PER_BLOCK = re.compile(r"_block\d+$")  # per-block NC (``nc1_block3``): the hf_nc block only


@dataclasses.dataclass(frozen=True)
class _Metric:
    key: str  # as given (per-split form: "<split>/<key>")
    split: str
    type: str  # metric id, split prefix removed
    value: float | int

    @property
    def name(self) -> str:
        return f"{_METRIC_NAMES.get(self.type, self.type)} ({self.split})"

    @property
    def in_model_index(self) -> bool:
        finite = isinstance(self.value, int) or math.isfinite(self.value)
        return self.type != "loss" and not _PER_BLOCK.search(self.type) and finite


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


def _split_key(key: str, default_split: str) -> tuple[str, str]:
    for prefix, prefix_split in _SPLIT_PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix):
            return prefix_split or default_split, key[len(prefix):]
    return default_split, key


def parse_metrics(metrics: Mapping[str, Any] | None, eval_split: str = "test") -> list[_Metric]:
    """Splits metrics into (split, metric) entries; both forms of ``adapter_card``'s ``metrics`` are accepted.

    Args:
        metrics: flat ``{"eval_accuracy": .., "train_nc1": ..}`` (Trainer-style prefixes name the split:
            ``train_`` / ``eval_train_subset_`` -> ``train``, ``eval_`` -> ``eval_split``, ``test_``,
            ``validation_`` / ``val_``; none -> ``eval_split``), or per split
            ``{"validation": {"accuracy": .., "nc1": ..}, "test": {...}}`` (inner keys may keep a prefix:
            ``eval_`` and the split's own are dropped, a train-subset one moves the entry to ``train``).
            Both forms may be mixed. Timing keys, booleans and non-numbers are dropped.
        eval_split: the split of un-prefixed and ``eval_`` keys in the flat form.

    Returns:
        entries with ``.split``, ``.type`` (metric id), ``.value``, ``.key``, ``.name``.
    """
    out = []
    for key, value in (metrics or {}).items():
        if isinstance(value, Mapping):  # per-split form
            split = str(key)
            for inner, v in value.items():
                v = _plain(v)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or _SKIP.search(inner):
                    continue
                name = inner[len(split) + 1:] if inner.startswith(f"{split}_") and len(inner) > len(split) + 1 else inner
                inner_split, mtype = _split_key(name, split)
                out.append(_Metric(f"{split}/{inner}", inner_split, mtype, v))
            continue
        value = _plain(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or _SKIP.search(key):
            continue
        split, mtype = _split_key(key, eval_split)
        out.append(_Metric(key, split, mtype, value))
    seen: dict[tuple[str, str], _Metric] = {}
    for m in out:  # one value per (split, metric): a later duplicate (an alias) is dropped
        seen.setdefault((m.split, m.type), m)
    return list(seen.values())


def metrics_from_log_history(log_history: Sequence[Mapping[str, Any]], eval_split: str = "validation",
                             ) -> dict[str, dict[str, float]]:
    """The latest value of every evaluation metric in ``TrainerState.log_history``, per split.

    For ``NCTrainer.create_model_card``: the Trainer evaluates on the validation split during training
    (``eval_*`` keys, the train-subset NC as ``eval_train_subset_*``) and a final ``predict`` / ``evaluate``
    with ``metric_key_prefix="test"`` logs ``test_*``. Training-loss logs (no ``eval_`` / ``test_`` prefix) are
    skipped.

    Args:
        log_history: ``trainer.state.log_history``.
        eval_split: the split the ``eval_`` keys were measured on.

    Returns:
        ``{"validation": {"accuracy": .., "nc1": ..}, "train": {"nc1": ..}, "test": {...}}`` (splits that
        appear only), ready for ``adapter_card(metrics=...)``.
    """
    latest: dict[str, Any] = {}
    for entry in log_history:
        latest.update({k: v for k, v in entry.items() if k.startswith(("eval_", "test_"))})
    out: dict[str, dict[str, float]] = {}
    for m in parse_metrics(latest, eval_split):
        out.setdefault(m.split, {})[m.type] = m.value
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


def _kwargs_src(load_kwargs: Mapping | None) -> str:
    return "".join(f", {k}={v!r}" for k, v in (load_kwargs or {}).items())


def _auto_snippet(repo_id: str, peft_type: str, load_kwargs: Mapping | None) -> str:
    why = f"registers hf-nc's PEFT methods ({peft_type})" if peft_type in _METHODS else "hf-nc's loader"
    return (f"import hf_nc  # {why}\n\n"
            f'model = hf_nc.{AUTO_LOADER}.from_pretrained("{repo_id}"{_kwargs_src(load_kwargs)}).eval()\n')


def _peft_snippet(base_model: str, repo_id: str, base_class: str, peft_type: str, load_kwargs: Mapping | None,
                  builtin: bool) -> str:
    register = (f"import hf_nc  # registers hf-nc's PEFT methods ({peft_type}) with PEFT: import it before loading\n"
                if peft_type in _METHODS or builtin else "")
    if builtin:  # the built-in checkpoint ships inside hf-nc: its stable name resolves to a local folder
        base_src = f'hf_nc.checkpoints.resolve_builtin("{base_model}")'
        register = register or "import hf_nc\n"
    else:
        base_src = f'"{base_model}"'
    return f'''{register}from peft import PeftModel
from transformers import {base_class}

base = {base_class}.from_pretrained({base_src}{_kwargs_src(load_kwargs)})
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
    source_url: str | None = None,
    extra: str = "",
) -> ModelCard:
    """A Hub model card for an hf-nc adapter, rendered from ``templates/adapter_card.md``.

    Metadata (``ModelCardData``): ``base_model`` (a Hub id only), ``library_name: peft``, ``tags``, ``datasets``
    (Hub datasets only), a ``model-index`` with one result per (split, metric) (accuracy and the NC metrics;
    losses and per-block NC are left out), and an ``hf_nc`` block (method, settings, parameter counts, every
    metric). Body: base, method and settings, trainable share, a metrics table per split, how to install
    hf-nc and load the adapter (``import hf_nc`` + ``hf_nc.AutoPeftModelForImageClassification``, and the
    plain PEFT way), framework versions.

    Args:
        base_model: the base model: a Hub id, hf-nc's built-in checkpoint (``"hf-nc/tiny-vit-fmnist"`` or its
            local path: the card names the stable name), or a local path (written into the PEFT snippet but
            left out of the ``base_model`` metadata, which the Hub requires to be a model id; warns).
        method: the PEFT method: a config (``hf_nc.SCLConfig(...)``), its class, its ``peft_type``
            (``"HFNC_SCL"``), or a short name (``"layer_ft"``, ``"scl"``, ``"head_ft"``). Other PEFT methods
            (``"LORA"``) are accepted and described generically.
        method_config: the method's settings: ``config.to_dict()``, the saved ``adapter_config.json`` or the
            config itself.
        trainable_params: trained parameters, as ``PeftModel.get_nb_trainable_parameters()[0]``.
        total_params: parameters of the base model (``base_param_count``): the trainable share is
            ``trainable_params / total_params``, hf-nc's one definition (the recipes' summary and README
            tables use it too).
        metrics: flat ``{"eval_accuracy": 0.91, "eval_train_subset_nc1": 0.12, ...}`` or per split
            ``{"validation": {"accuracy": .., "nc1": ..}, "test": {...}, "train": {"nc1": ..}}`` (see
            ``parse_metrics``).
        dataset: the fine-tuning dataset as hf-nc names it: a Hub id, a built-in name (``fashion_mnist`` is
            listed as ``zalando-datasets/fashion_mnist``; ``digits`` has no Hub id and is only named in the
            text) or a local folder (never listed; its path never appears).
        library_name: the Hub ``library_name`` (``peft``: the Hub then shows PEFT's loading snippet).
        repo_id: the adapter's repo, for the loading snippets (default: ``REPO_ID_PLACEHOLDER``, which
            ``push_adapter`` replaces).
        model_name: the card's title and model-index name (default: the repo name, or "<method> adapter").
        dataset_name: pretty name of ``dataset`` for the model-index and the text.
        dataset_config: config of ``dataset`` for the model-index.
        eval_split: the split that un-prefixed and ``eval_``-prefixed flat metrics were measured on.
        base_model_class: the transformers class of the PEFT snippet's base.
        load_kwargs: keyword arguments of the base's ``from_pretrained`` in both snippets, e.g.
            ``{"num_labels": 10, "ignore_mismatched_sizes": True}`` when the adapter's head has another number
            of classes than the base's (default for the PEFT snippet when the config records ``id2label``).
        pipeline_tag: Hub ``pipeline_tag``.
        license: Hub ``license``.
        tags: more Hub tags (added to ours).
        source_url: git URL of hf-nc's source for the install command (see ``install_command``).
        extra: Markdown appended to the card body (training details, links, ...).

    Returns:
        a ``huggingface_hub.ModelCard``: ``.save(path)``, ``.push_to_hub(repo_id)``, ``.data``, ``.text``.

    Raises:
        ValueError: when the parameter counts are impossible.
    """
    if not isinstance(trainable_params, int) or not isinstance(total_params, int):
        trainable_params, total_params = int(trainable_params), int(total_params)
    if total_params <= 0 or trainable_params < 0:
        raise ValueError(f"need trainable_params >= 0 and total_params > 0, got {trainable_params} and {total_params}")
    peft_type, method_tag, title, config_cls, what = _method_info(method)
    if method_config is None and hasattr(method, "to_dict"):
        method_config = method
    config = _plain(_config_dict(method_config))
    settings = _settings(config, peft_type)
    id2label = config.get("id2label") or {}
    labels = [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))] if isinstance(id2label, Mapping) else []
    parsed = parse_metrics(metrics, eval_split)
    builtin = builtin_model_name(base_model)
    if builtin:
        base_model = builtin
    base_is_hub_id = not builtin and not is_local_path(base_model)
    if not base_is_hub_id and not builtin:
        warnings.warn(f"base_model {base_model!r} looks like a local path: it is left out of the card's "
                      "`base_model` metadata (the Hub expects a model id)", stacklevel=2)
    name = model_name or (repo_id.rstrip("/").split("/")[-1] if repo_id else f"{title} adapter for {base_model}")
    hub_dataset = hub_dataset_id(dataset)

    eval_results = None
    if dataset and parsed:
        # the model-index needs a dataset type: the Hub id, else hf-nc's own name (never a local path)
        ds_type = hub_dataset or ("imagefolder" if is_local_path(dataset) else dataset)
        ds_name = dataset_name or (hub_dataset or ("local image folder" if is_local_path(dataset) else dataset))
        eval_results = [
            EvalResult(task_type="image-classification", task_name="Image Classification", dataset_type=ds_type,
                       dataset_name=ds_name, dataset_config=dataset_config, dataset_split=m.split,
                       metric_type=m.type, metric_value=m.value, metric_name=m.name)
            for m in sorted(parsed, key=lambda m: _split_rank(m.split)) if m.in_model_index
        ] or None
    all_tags = list(dict.fromkeys(["hf-nc", "neural-collapse", method_tag, "peft", *tags]))
    data = ModelCardData(
        base_model=base_model if base_is_hub_id else None,
        library_name=library_name,
        pipeline_tag=pipeline_tag,
        license=license,
        tags=all_tags,
        datasets=[hub_dataset] if hub_dataset else None,
        metrics=sorted({m.type for m in parsed if m.type in ("accuracy", "f1")}) or None,
        model_name=name if eval_results else None,
        eval_results=eval_results,
        hf_nc={
            "method": method_tag,
            "peft_type": peft_type,
            "base_model": base_model if (base_is_hub_id or builtin) else None,
            "settings": settings,
            "trainable_params": trainable_params,
            "base_params": total_params,
            "trainable_percent": round(100.0 * trainable_params / total_params, 6),
            "metrics": {m.key: m.value for m in parsed},
            **({"labels": labels} if labels else {}),
        },
    )

    repo = repo_id or REPO_ID_PLACEHOLDER
    # plain PEFT loads the base as it is: a head for the adapter's classes needs the base built with that many
    # (hf-nc's loader reads id2label from the adapter itself)
    peft_kwargs = load_kwargs if load_kwargs is not None else (
        {"num_labels": len(labels), "ignore_mismatched_sizes": True} if labels else None)
    splits = sorted({m.split for m in parsed if not _PER_BLOCK.search(m.type)}, key=_split_rank)
    table: dict[str, dict[str, str]] = {}
    for m in parsed:
        if not _PER_BLOCK.search(m.type):
            table.setdefault(_METRIC_NAMES.get(m.type, m.type), {})[m.split] = _fmt(m.value)
    if builtin:
        base_text = (f"hf-nc's built-in checkpoint `{base_model}` (it ships inside hf-nc: "
                     f"`hf_nc.checkpoints.resolve_builtin(\"{base_model}\")` gives its local folder)")
    elif base_is_hub_id:
        base_text = f"[`{base_model}`](https://huggingface.co/{base_model})"
    else:
        base_text = f"`{base_model}`"
    return render_card(
        "adapter_card.md", data,
        title=name, base_text=base_text, method_title=title, method_what=what, peft_type=peft_type,
        config_call=(f"hf_nc.{config_cls}(" + ", ".join(f"{k}={_py_literal(v)}" for k, v in settings.items()) + ")")
        if config_cls else None,
        settings=[(k, _py_literal(v)) for k, v in settings.items()],
        base_record=_base_record(config), hf_nc_method=peft_type in _METHODS, labels=labels,
        dataset_text=dataset_text(dataset, dataset_name),
        trainable=f"{trainable_params:,}", total=f"{total_params:,}", trainable_h=_human(trainable_params),
        total_h=_human(total_params), pct=trainable_percent(trainable_params, total_params),
        splits=splits, table=table, has_nc=any(m.type.startswith("nc") or m.type == "cdnv" for m in parsed),
        install=install_command(source_url),
        auto_snippet=_auto_snippet(repo, peft_type, load_kwargs).rstrip("\n"),
        peft_snippet=_peft_snippet(base_model, repo, base_model_class, peft_type, peft_kwargs, bool(builtin)).rstrip("\n"),
        auto_loader=AUTO_LOADER, versions=_versions(), extra=extra.strip("\n"),
    )


def _split_rank(split: str) -> tuple[int, str]:
    return (_SPLIT_ORDER.index(split) if split in _SPLIT_ORDER else len(_SPLIT_ORDER), split)


def loading_snippet(card: ModelCard, which: str = "auto") -> str:
    """A Python loading snippet of a card made by ``adapter_card``.

    Args:
        card: the card.
        which: ``"auto"`` (``import hf_nc`` + ``hf_nc.AutoPeftModelForImageClassification.from_pretrained``)
            or ``"peft"`` (the base with transformers, then ``PeftModel.from_pretrained``).

    Returns:
        the snippet's source.

    Raises:
        ValueError: for another ``which``, or a card without that snippet.
    """
    if which not in ("auto", "peft"):
        raise ValueError(f"which must be 'auto' or 'peft', got {which!r}")
    blocks = re.findall(r"```python\n(.*?)```", card.text.split("## How to load", 1)[-1], re.S)
    for block in blocks:
        if (AUTO_LOADER in block) == (which == "auto") and "from_pretrained" in block:
            return block
    raise ValueError(f"the card has no {which!r} loading snippet")


def adapter_card_from_model(model, base_model: str | None = None, metrics: Mapping[str, Any] | None = None,
                            dataset: str | None = None, adapter_name: str = "default", **kwargs) -> ModelCard:
    """``adapter_card`` with the method, settings and parameter counts read from a ``PeftModel``.

    Args:
        model: a ``peft.PeftModel`` (read duck-typed: ``peft_config``, ``get_nb_trainable_parameters``).
        base_model: the base's Hub id or built-in name; default: the adapter config's
            ``base_model_name_or_path``.
        metrics: flat or per split, see ``adapter_card``.
        dataset: see ``adapter_card``.
        adapter_name: which of the model's adapters.
        **kwargs: the other keyword arguments of ``adapter_card``.

    Returns:
        the card.

    Raises:
        ValueError: when no base model is known.
    """
    config = model.peft_config[adapter_name]
    base_model = base_model or config.base_model_name_or_path
    if not base_model:
        raise ValueError("pass base_model: the adapter config does not name its base model")
    trainable = model.get_nb_trainable_parameters()[0]
    return adapter_card(base_model, config, config.to_dict(), trainable, base_param_count(model), metrics, dataset,
                        **kwargs)


def base_param_count(model) -> int:
    """Parameters of a ``PeftModel``'s base model, without the adapters' own (the trainable share's denominator).

    PEFT keeps every adapter's parameters in containers keyed by the adapter name
    (``....hfnc_scl_block.default.attention...``, ``...hfnc_head_ft_delta.default``,
    ``classifier.modules_to_save.default.weight``), so a parameter is the base's when no name component is an
    adapter name. A model without ``peft_config`` counts all its parameters.
    """
    names = set(getattr(model, "peft_config", {}) or {})
    return sum(p.numel() for n, p in model.named_parameters() if not names.intersection(n.split(".")))
