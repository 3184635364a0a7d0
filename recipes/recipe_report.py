"""The recipes' outputs: the summary table, the saved adapter or model, its model card, and ``--push_to_hub``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
from recipe_args import MethodArguments
from torch import nn
from transformers import TrainingArguments

import hf_nc
from hf_nc.backbones import resolve_backbone


def versions() -> dict:
    import peft
    import transformers

    return {"hf_nc": getattr(hf_nc, "__version__", "unknown"), "transformers": transformers.__version__, "peft": peft.__version__,
            "torch": torch.__version__}


def save_trained(model: nn.Module, method: str, folder: Path, processor=None, card=None) -> int:
    """Saves what the method trained (and the image processor); returns the bytes written.

    PEFT methods: the adapter. full: the whole model. linear_probe: only the classifier
    (``classifier.safetensors``) and the config, since everything else is the base model. The
    image processor (``preprocessor_config.json``) goes into the folder too, so
    ``pipeline("image-classification", ..., image_processor=folder)`` preprocesses as trained;
    an adapter's ``card`` (``hf_nc.cards``) becomes its README.md instead of PEFT's blank template.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if method == "linear_probe":
        backbone = resolve_backbone(model)
        tensors = {f"{backbone.classifier_path}.{k}": v.detach().contiguous() for k, v in backbone.classifier.state_dict().items()}
        save_file(tensors, folder / "classifier.safetensors")
        model.config.save_pretrained(folder)
    elif card is not None:
        from hf_nc import cards

        cards.save_adapter(model, folder, card)
    else:
        model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


COLUMNS = ("method", "tuned", "trainable", "% of base", "adapter bytes", "val acc", "test acc", "train NC1", "val NC1",
           "test NC1", "steps", "wall s")


def _num(value, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def format_summary(s: dict) -> str:
    cells = (s["method"], s["tuned"], f"{s['trainable_params']:,}", f"{s['trainable_percent']:.2f}", f"{s['adapter_bytes']:,}",
             _num(s["validation_accuracy"], ".4f"), _num(s["test_accuracy"], ".4f"), _num(s["train_nc1"], ".4g"),
             _num(s["validation_nc1"], ".4g"), _num(s["test_nc1"], ".4g"), str(s["settings"]["optimizer_steps"]),
             f"{s['wall_time_s']:.1f}")
    widths = [max(len(c), len(v)) for c, v in zip(COLUMNS, cells)]
    line = lambda row: " | ".join(v.rjust(w) for v, w in zip(row, widths))  # noqa: E731
    return "\n".join([line(COLUMNS), "-+-".join("-" * w for w in widths), line(cells)])


def adapter_card(model, summary: dict, dataset: str, repo_id: Optional[str], metrics: dict):
    """The hf-nc model card of a PEFT adapter (``hf_nc.cards``): validation and test results, the loading snippet."""
    from hf_nc import cards
    from hf_nc.data.builtin import BUILTIN_NAMES

    hub_dataset = None if Path(dataset).exists() or dataset.lower() in BUILTIN_NAMES else dataset  # only Hub datasets
    per_split = {split: {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                 for split, values in metrics.items() if values}
    load_kwargs = {"num_labels": summary["num_labels"], "ignore_mismatched_sizes": True}
    return cards.adapter_card_from_model(model, metrics=per_split, dataset=hub_dataset, load_kwargs=load_kwargs,
                                         repo_id=repo_id)  # repo_id None: push_adapter fills it in


def push(model, method: MethodArguments, targs: TrainingArguments, card=None, processor=None) -> str:
    """Pushes the adapter (PEFT methods, with its hf-nc ``card``) or the model, and the image processor.

    An adapter, its card and the image processor go in one commit (``hf_nc.cards.push_adapter``); a full model is
    pushed by ``push_to_hub``, then its image processor.
    """
    repo_id = targs.hub_model_id or Path(targs.output_dir).name
    kwargs = dict(private=bool(targs.hub_private_repo), token=targs.hub_token)
    if hasattr(model, "peft_config"):
        from hf_nc import cards

        # with the image processor: pipeline(..., image_processor=repo_id) preprocesses as trained
        return cards.push_adapter(model, repo_id, card, private=kwargs["private"], token=kwargs["token"], image_processor=processor)
    url = model.push_to_hub(repo_id, commit_message=f"hf-nc {method.method} fine-tuning", **kwargs).commit_url
    if processor is not None:  # pipeline("image-classification", model=repo_id) needs it
        processor.push_to_hub(repo_id, commit_message="image processor", **kwargs)
    return url


def check_push(targs: TrainingArguments) -> str:
    """What ``--push_to_hub`` needs, checked before training: returns the repo id, or raises.

    Offline mode, the token, the repo id's syntax, and (online) that the token is accepted, so a
    push that cannot succeed fails in seconds instead of after the whole run.

    Raises:
        ValueError: naming what is missing.
    """
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = targs.hub_model_id or Path(targs.output_dir).name
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"--push_to_hub: {repo_id!r} is not a valid Hub repo id (set --hub_model_id 'user/name'): {e}") from e
    if constants.is_offline_mode():
        raise ValueError("--push_to_hub, but the Hub is off (HF_HUB_OFFLINE=1): unset it, or train without --push_to_hub and "
                         "push output_dir/adapter later with hf_nc.cards.push_adapter")
    token = targs.hub_token or get_token()
    if not token:
        raise ValueError("--push_to_hub needs a Hub token: `hf auth login`, HF_TOKEN, or --hub_token")
    try:
        HfApi(token=token).whoami()
    except Exception as e:  # network down, token refused: both make the final push fail
        raise ValueError(f"--push_to_hub: the Hub does not accept the token ({type(e).__name__}: {e})") from e
    return repo_id
