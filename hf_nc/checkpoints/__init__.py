"""Checkpoints shipped inside hf-nc.

``DEFAULT_MODEL``: path (str) of a small ViT pre-trained on Fashion-MNIST by
``recipes/pretrain_vit.py`` (see its README.md); load it offline with
``ViTForImageClassification.from_pretrained(DEFAULT_MODEL)``.

``DEFAULT_MODEL_NAME`` (``"hf-nc/tiny-vit-fmnist"``): its stable name. A local path differs from one
install to the next, so adapters trained on the built-in model record this name as their
``base_model_name_or_path``, and :func:`resolve_builtin` turns it back into this install's folder
(``hf_nc.AutoPeftModelForImageClassification`` does that for you).

>>> from transformers import ViTForImageClassification
>>> from hf_nc.checkpoints import resolve_builtin
>>> model = ViTForImageClassification.from_pretrained(resolve_builtin("hf-nc/tiny-vit-fmnist"))
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = str(Path(__file__).resolve().parent / "hf-nc-tiny-vit-fmnist")
DEFAULT_MODEL_NAME = "hf-nc/tiny-vit-fmnist"

#: stable name -> local folder, for every checkpoint shipped inside hf-nc
BUILTIN_MODELS: dict[str, str] = {DEFAULT_MODEL_NAME: DEFAULT_MODEL}


def resolve_builtin(name_or_path: str | os.PathLike) -> str:
    """The local folder of a built-in checkpoint given its stable name; anything else unchanged.

    Args:
        name_or_path: A built-in name such as ``"hf-nc/tiny-vit-fmnist"``, or any Hub id or path.

    Returns:
        The built-in checkpoint's folder in this install for a built-in name, else
        ``str(name_or_path)`` (a Hub id or a path for ``from_pretrained``).
    """
    name = str(name_or_path)
    return BUILTIN_MODELS.get(_as_name(name), name)


def _as_name(name: str) -> str:
    """A built-in name however typed: ``"hf-nc/tiny-vit-fmnist/"`` (shell completion adds the slash)
    is that name, unless such a local folder exists (then it is that folder, as for transformers)."""
    stripped = name.rstrip("/")
    return stripped if stripped in BUILTIN_MODELS and not os.path.isdir(name) else name


def builtin_name(name_or_path: str | os.PathLike | None) -> str | None:
    """The stable name when ``name_or_path`` is a built-in checkpoint (its name, or its folder in this
    install, however spelt); ``None`` otherwise."""
    if name_or_path is None:
        return None
    name = _as_name(str(name_or_path))
    if name in BUILTIN_MODELS:
        return name
    try:
        real = os.path.realpath(os.path.expanduser(name))
    except (OSError, ValueError):
        return None
    for stable, path in BUILTIN_MODELS.items():
        if real == os.path.realpath(path):
            return stable
    return None


__all__ = ["BUILTIN_MODELS", "DEFAULT_MODEL", "DEFAULT_MODEL_NAME", "builtin_name", "resolve_builtin"]
