"""Backbone specs: the one place that knows module paths of transformers 5.x vision models."""

from .registry import (
    UnsupportedBackboneError,
    get_spec,
    list_backbones,
    register_backbone,
    resolve_backbone,
    supported_model_types,
)
from .spec import Backbone, BackboneSpec, pool_tokens

__all__ = [
    "Backbone",
    "BackboneSpec",
    "UnsupportedBackboneError",
    "get_spec",
    "list_backbones",
    "pool_tokens",
    "register_backbone",
    "resolve_backbone",
    "supported_model_types",
]
