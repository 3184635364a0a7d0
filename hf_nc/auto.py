"""One-call loading of image-classification adapters: ``hf_nc.AutoPeftModelForImageClassification``.

``peft.PeftModel.from_pretrained(base, adapter)`` needs three things a user of a shared adapter may
not have: the hf-nc methods registered with PEFT (``import hf_nc``; without it PEFT raises a bare
``KeyError: 'HFNC_SCL'``), a base model that resolves on this machine (the built-in checkpoint's
folder differs per install) and a base whose classification head has the adapter's number of
classes. This loader does all three from the adapter alone::

    import hf_nc

    model = hf_nc.AutoPeftModelForImageClassification.from_pretrained("user/my-adapter")  # or a folder
    pipe = transformers.pipeline("image-classification", model=model, image_processor="user/my-adapter")
"""

from __future__ import annotations

import os
from typing import Any, Optional

import transformers
from peft import PeftConfig, PeftModel

from .adapters import register_methods
from .adapters._weights_files import check_adapter_folder
from .checkpoints import resolve_builtin

__all__ = ["AutoPeftModelForImageClassification"]

_HUB_KWARGS = ("revision", "token", "cache_dir", "subfolder", "local_files_only", "force_download")


class AutoPeftModelForImageClassification:
    """Loads a PEFT adapter (hf-nc's Layer FT / SCL FT / head FT, or any PEFT method) together with
    its base image classifier, in the spirit of PEFT's ``AutoPeftModel*`` classes.

    Not instantiable: use :meth:`from_pretrained`.
    """

    def __init__(self, *args, **kwargs):
        raise OSError(f"{type(self).__name__} is designed to be instantiated with {type(self).__name__}.from_pretrained(...)")

    @classmethod
    def from_pretrained(
        cls,
        adapter_name_or_path: str | os.PathLike,
        *,
        adapter_name: str = "default",
        is_trainable: bool = False,
        base_model_name_or_path: Optional[str] = None,
        revision: Optional[str] = None,
        token: Optional[str | bool] = None,
        cache_dir: Optional[str | os.PathLike] = None,
        subfolder: Optional[str] = None,
        **base_model_kwargs: Any,
    ) -> PeftModel:
        """Builds the adapter's base model and loads the adapter into it.

        Steps: registers hf-nc's PEFT methods; reads ``adapter_config.json``; resolves the base it
        records (``base_model_name_or_path``; built-in names such as ``"hf-nc/tiny-vit-fmnist"``
        become this install's folder, see :func:`hf_nc.checkpoints.resolve_builtin`); builds the
        base with the class the adapter was made on (``base_model_class``, recorded by hf-nc's
        methods; ``AutoModelForImageClassification`` otherwise) and with the adapter's number of
        classes and class names (``id2label`` recorded by hf-nc's methods, else the shape of the
        saved classifier), so the head fits; then ``peft.PeftModel.from_pretrained``.

        Args:
            adapter_name_or_path: A local adapter folder or a Hub repo id.
            adapter_name: Name of the adapter inside the returned ``PeftModel``.
            is_trainable: Load the adapter for further training (PEFT's ``is_trainable``).
            base_model_name_or_path: Use this base instead of the one the adapter records (a Hub id,
                a folder or a built-in name).
            revision, token, cache_dir, subfolder: Where to find the adapter on the Hub (as in
                ``hf_hub_download``); ``token`` and ``cache_dir`` are also used for the base.
            **base_model_kwargs: Passed to the base model's ``from_pretrained`` (e.g. ``dtype``,
                ``device_map``, or ``revision`` of the base via ``base_revision``).

        Returns:
            The ``PeftModel`` (in eval mode unless ``is_trainable``).

        Raises:
            ValueError: If the adapter records no base model and none is given.
        """
        register_methods()  # idempotent: makes PEFT find HFNC_* types even if hf_nc.adapters was bypassed
        hub = {k: v for k, v in dict(revision=revision, token=token, cache_dir=cache_dir, subfolder=subfolder).items()
               if v is not None}
        for key in ("local_files_only", "force_download"):
            if key in base_model_kwargs:
                hub[key] = base_model_kwargs[key]
        config = PeftConfig.from_pretrained(str(adapter_name_or_path), **hub)
        local = os.path.join(str(adapter_name_or_path), subfolder) if subfolder else str(adapter_name_or_path)
        check_adapter_folder(local)  # a local folder without weights: named now, before the base is built
        base_id = base_model_name_or_path or config.base_model_name_or_path
        if not base_id:
            raise ValueError(
                f"The adapter {adapter_name_or_path} records no base model (base_model_name_or_path is empty in its "
                "adapter_config.json): pass base_model_name_or_path=... (a Hub id, a folder, or a built-in name such as "
                "'hf-nc/tiny-vit-fmnist')."
            )
        base_path = resolve_builtin(base_id)

        base_kwargs = dict(base_model_kwargs)
        if "base_revision" in base_kwargs:
            base_kwargs["revision"] = base_kwargs.pop("base_revision")
        elif getattr(config, "revision", None) and base_path == base_id:
            base_kwargs["revision"] = config.revision  # PEFT records the base's revision here
        for key in ("token", "cache_dir"):
            if key in hub:
                base_kwargs.setdefault(key, hub[key])
        base_config = transformers.AutoConfig.from_pretrained(
            base_path, **{k: base_kwargs[k] for k in ("revision", "token", "cache_dir") if k in base_kwargs})
        num_labels, id2label = _adapter_labels(config, str(adapter_name_or_path), hub)
        if num_labels is not None:
            if id2label is not None:  # (num_labels follows from id2label; passing both makes transformers warn)
                base_kwargs.setdefault("id2label", id2label)
                base_kwargs.setdefault("label2id", {v: k for k, v in id2label.items()})
            else:
                base_kwargs.setdefault("num_labels", num_labels)
            if getattr(base_config, "num_labels", None) != num_labels:
                # the base's own head has another size: it is replaced by the adapter's head anyway
                base_kwargs.setdefault("ignore_mismatched_sizes", True)
        model_cls = _base_class(config, base_config)
        base = model_cls.from_pretrained(base_path, **base_kwargs)
        model = PeftModel.from_pretrained(base, str(adapter_name_or_path), adapter_name=adapter_name,
                                          is_trainable=is_trainable, **hub)
        return model if is_trainable else model.eval()


def _base_class(config: PeftConfig, base_config) -> type:
    """The transformers class to build the base with: the one the adapter was made on if recorded."""
    name = getattr(config, "base_model_class", None)
    model_cls = getattr(transformers, name, None) if name else None
    if isinstance(model_cls, type) and hasattr(model_cls, "from_pretrained"):
        return model_cls
    return transformers.AutoModelForImageClassification


def _adapter_labels(config: PeftConfig, adapter: str, hub: dict) -> tuple[Optional[int], Optional[dict[int, str]]]:
    """``(num_labels, id2label)`` of the adapter's own head, or ``(None, None)`` if it saves no head.

    The head is saved when a ``modules_to_save`` entry's ``.weight`` is in the adapter file; its
    first dimension is the number of classes. Class names come from hf-nc's recorded ``id2label``.
    """
    shape = None
    modules = list(getattr(config, "modules_to_save", None) or [])
    if modules:
        keys = _weight_shapes(adapter, hub)
        for module in modules:
            for key in (f"base_model.model.{module}.weight", f"{module}.weight"):
                if key in keys and len(keys[key]) == 2:
                    shape = keys[key]
                    break
            if shape is not None:
                break
    recorded = getattr(config, "id2label", None)
    if shape is None:
        return None, None
    id2label = {int(k): v for k, v in recorded.items()} if recorded else None
    if id2label is not None and len(id2label) != shape[0]:
        id2label = None
    return int(shape[0]), id2label


def _weight_shapes(adapter: str, hub: dict) -> dict[str, list[int]]:
    """Tensor shapes in the adapter's safetensors file (header only), or ``{}`` if there is none."""
    from safetensors import safe_open

    from .adapters._weights_files import _adapter_weights_file

    path = _adapter_weights_file(adapter, hub.get("subfolder"), {k: v for k, v in hub.items() if k != "subfolder"})
    if path is None:
        return {}
    try:
        with safe_open(path, framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # noqa: BLE001 - a corrupt file: PeftModel.from_pretrained reports it, naming the file
        return {}
