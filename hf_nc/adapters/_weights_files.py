"""Checks of an adapter's files before PEFT reads them: a folder without weights, a truncated or
corrupt safetensors file, a file that lacks the tensors of the modules saved with the adapter.
PEFT would otherwise fall back to the Hub with a folder's path as a repo id, or fail with a bare
``KeyError`` / an error naming no file."""

from __future__ import annotations

import os
from typing import Optional

from peft.utils.other import ModulesToSaveWrapper
from torch import nn

PEFT_PREFIX = "base_model.model."


def _partial_load_error(config, missing: list[str], unexpected: list[str], file: str | None = None) -> ValueError:
    where = f" {file}" if file else ""
    return ValueError(
        f"The {config.peft_type} checkpoint{where} does not match the adapter built on this model "
        f"({len(missing)} tensors missing, {len(unexpected)} unknown), refusing a partial load. "
        f"Missing: {missing[:5]}{' ...' if len(missing) > 5 else ''}. "
        f"Unknown: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}. "
        "Is the adapter file truncated, or made for another base model?"
    )


def check_adapter_folder(folder: str) -> None:
    """Raises ``FileNotFoundError`` naming ``folder`` when a local adapter folder holds no weights file.

    PEFT then falls back to the Hub with the folder's path as a repo id, and fails with huggingface_hub's
    "Repo id must be in the form 'repo_name' or 'namespace/repo_name'", which names no missing file.
    """
    from peft.utils.constants import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME

    if os.path.isdir(folder) and not any(os.path.isfile(os.path.join(folder, n)) for n in (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME)):
        raise FileNotFoundError(
            f"The adapter folder {folder} holds no weights file ({SAFETENSORS_WEIGHTS_NAME} or {WEIGHTS_NAME}), only "
            f"{sorted(os.listdir(folder))[:10]}: the save or copy was probably interrupted; save or fetch the adapter again."
        )


def _adapter_weights_file(model_id: str, subfolder: Optional[str], hub_kwargs: dict) -> str | None:
    """The ``adapter_model.safetensors`` PEFT's ``load_peft_weights`` will read, or ``None`` when there
    is none to check (a ``.bin`` adapter, or a Hub file that cannot be fetched: PEFT then raises its own
    error)."""
    from peft.utils.constants import SAFETENSORS_WEIGHTS_NAME

    local = os.path.join(model_id, subfolder) if subfolder else model_id
    if os.path.isdir(local):
        check_adapter_folder(local)
        path = os.path.join(local, SAFETENSORS_WEIGHTS_NAME)
        return path if os.path.isfile(path) else None
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(model_id, SAFETENSORS_WEIGHTS_NAME, subfolder=subfolder, **hub_kwargs)
    except Exception:  # noqa: BLE001 - not found / offline: PEFT's own loader reports it
        return None


def check_adapter_weights_file(model: nn.Module, config, adapter_name: str, model_id: str,
                               subfolder: Optional[str] = None, hub_kwargs: Optional[dict] = None) -> None:
    """Checks the adapter's safetensors file before PEFT loads it.

    Raises:
        ValueError: naming the file, if it is not a readable safetensors file (truncated or corrupt
            download), or if it lacks tensors of the modules saved with the adapter (e.g. the
            classifier): PEFT itself would raise a bare ``KeyError`` for those. Missing or unknown
            tuner tensors are caught later, by ``NCTuner._remap_adapter_state_dict_for_load``.
    """
    from safetensors import safe_open

    path = _adapter_weights_file(model_id, subfolder, hub_kwargs or {})
    if path is None:
        return
    try:
        with safe_open(path, framework="pt") as f:
            keys = set(f.keys())
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError / OSError types
        size = os.path.getsize(path) if os.path.exists(path) else 0
        raise ValueError(
            f"The adapter weights file {path} ({size} bytes) is not a valid safetensors file: {err}. "
            "It is probably truncated or corrupt (an interrupted download or copy): delete it and fetch or save "
            "the adapter again."
        ) from err
    needed = []
    for name, module in model.named_modules():
        if isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
            needed += [f"{PEFT_PREFIX}{name}.{k}" for k in module.adapter_state_dict_load_map(adapter_name)]
    missing = sorted(k for k in needed if k not in keys and k.removeprefix(PEFT_PREFIX) not in keys)
    if missing:
        raise _partial_load_error(config, missing, [], file=path)
