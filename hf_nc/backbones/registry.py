"""String-keyed registry of backbone specs and their resolution on a model."""

from __future__ import annotations

from torch import nn

from .spec import Backbone, BackboneSpec
from .specs import BUILTIN_SPECS

_REGISTRY: dict[str, BackboneSpec] = {}


class UnsupportedBackboneError(ValueError):
    """Raised for a model whose architecture has no backbone spec."""


def register_backbone(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Adds a spec to the registry, keyed by ``spec.name``.

    Raises:
        ValueError: If the name or one of its model types is taken and ``overwrite`` is False.
    """
    if not overwrite:
        taken = [s.name for s in _REGISTRY.values() if s.name == spec.name or set(s.model_types) & set(spec.model_types)]
        if taken:
            raise ValueError(f"backbone spec {spec.name!r} clashes with registered spec(s) {taken}")
    _REGISTRY[spec.name] = spec
    return spec


for _spec in BUILTIN_SPECS:
    register_backbone(_spec)


def list_backbones() -> list[str]:
    """Names of the registered specs."""
    return sorted(_REGISTRY)


def supported_model_types() -> list[str]:
    """``config.model_type`` values that hf-nc supports."""
    return sorted(t for s in _REGISTRY.values() for t in s.model_types)


def _unwrap(model: nn.Module) -> nn.Module:
    # PeftModel -> tuner -> transformers model.
    while hasattr(model, "get_base_model"):
        inner = model.get_base_model()
        if inner is model:
            break
        model = inner
    return model


def get_spec(model_or_type: nn.Module | str) -> BackboneSpec:
    """The spec for a model, a config or a ``model_type`` string.

    Raises:
        UnsupportedBackboneError: Naming the supported model types and how to add a spec.
    """
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        config = getattr(_unwrap(model_or_type), "config", model_or_type)
        model_type = getattr(config, "model_type", None)
    for spec in _REGISTRY.values():
        if model_type in spec.model_types:
            return spec
    raise UnsupportedBackboneError(
        f"hf-nc has no backbone spec for model_type={model_type!r}. Supported: "
        f"{', '.join(supported_model_types())}. To add one, describe where the blocks, "
        "attention projections, final norm and classifier are in a hf_nc.backbones.BackboneSpec "
        "and call hf_nc.backbones.register_backbone(spec)."
    )


def resolve_backbone(model: nn.Module) -> Backbone:
    """Resolves the model's spec into its actual modules.

    Args:
        model: A transformers vision model (bare, with a head, or wrapped by PEFT).

    Raises:
        UnsupportedBackboneError: For an architecture without a spec, or a model whose
            modules do not match its spec.
    """
    model = _unwrap(model)
    spec = get_spec(model)
    for tower_path in spec.tower_paths:
        try:
            tower = model.get_submodule(tower_path) if tower_path else model
            blocks = tower.get_submodule(spec.blocks)
            final_norm = tower.get_submodule(spec.final_norm)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList):
            break
    else:
        raise UnsupportedBackboneError(
            f"{type(model).__name__} has model_type in {spec.model_types} but its blocks were not found at "
            f"{[('.'.join(p for p in (t, spec.blocks) if p)) for t in spec.tower_paths]}: the "
            f"{spec.name!r} spec does not match this transformers version."
        )
    classifier_path = next((p for p in spec.classifier_paths if _has_submodule(model, p)), None)
    return Backbone(
        spec=spec,
        model=model,
        tower_path=tower_path,
        blocks=blocks,
        final_norm=final_norm,
        classifier=model.get_submodule(classifier_path) if classifier_path else None,
        classifier_path=classifier_path,
        config=spec.vision_config(model.config),
    )


def _has_submodule(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True
