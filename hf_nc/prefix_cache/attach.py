"""How a model runs from the cache: pass-through forwards for the stem and the frozen blocks.

:meth:`PrefixCacheHandle.install` (via ``PrefixCache.attach``) patches them; a cached row
(3-D ``pixel_values``) switches them to hand the row on, an image batch runs the real modules.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from ..backbones import resolve_backbone
from .checks import _scl_delta_source, _stem, first_tuned_block, prefix_weights_mismatch
from .layout import PrefixCacheError, PrefixLayout


class _State:
    def __init__(self):
        self.on = False
        self.ref: Optional[torch.Tensor] = None


class PrefixCacheHandle:
    """The patches that let a model run from cached prefix states (:meth:`PrefixCache.attach`)."""

    _ATTR = "_hf_nc_prefix_cache_handle"

    def __init__(self, model: nn.Module, layout: PrefixLayout):
        self.layout = layout
        self.backbone = backbone = resolve_backbone(model)
        self._model = backbone.model
        self._state = _State()
        self._patched: list[tuple[nn.Module, Any]] = []
        self._hooks: list = []
        stem = _stem(backbone)
        rows = layout.parts * layout.num_tokens

        state = self._state

        def is_cached(x) -> bool:
            if not isinstance(x, torch.Tensor) or x.dim() != 3:
                return False
            if tuple(x.shape[1:]) != (rows, layout.hidden_size):
                raise PrefixCacheError(
                    f"got 3-D pixel_values of shape {tuple(x.shape)}, but this model's prefix cache holds rows of "
                    f"shape {(rows, layout.hidden_size)}: pass images (B, C, H, W) or rows of this cache"
                )
            return True

        def embeddings_forward(original):
            def forward(x=None, *args, **kwargs):
                if x is None:
                    x = kwargs.pop("pixel_values", None)
                if is_cached(x):
                    state.on = True
                    if layout.parts == 2:
                        state.ref = x[:, layout.num_tokens:]
                        return x[:, :layout.num_tokens]
                    return x
                state.on, state.ref = False, None
                return original(x, *args, **kwargs)
            return forward

        def pass_through(original, as_block: bool):
            def forward(*args, **kwargs):
                if not state.on:
                    return original(*args, **kwargs)
                hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))
                if as_block and not layout.block_returns_tensor:
                    return (hidden,)
                return hidden
            return forward

        def frozen_ref(original):
            def forward(*args, **kwargs):
                if not state.on:
                    return original(*args, **kwargs)
                return state.ref if layout.block_returns_tensor else (state.ref,)
            return forward

        emb = stem[0][1]
        self._patch(emb, embeddings_forward(emb.forward))
        for _, module in stem[1:]:
            self._patch(module, pass_through(module.forward, as_block=False))
        for i in range(layout.block):
            self._patch(backbone.blocks[i], pass_through(backbone.blocks[i].forward, as_block=True))
        if layout.parts == 2:
            base = backbone.blocks[layout.block].base_layer
            self._patch(base, frozen_ref(base.forward))

        def reset(*_):
            state.on, state.ref = False, None

        self._hooks.append(self._model.register_forward_hook(reset, always_call=True))

    def _patch(self, module: nn.Module, forward: Callable) -> None:
        self._patched.append((module, module.__dict__.get("forward")))
        module.forward = forward

    @classmethod
    def install(cls, model: nn.Module, layout: PrefixLayout) -> "PrefixCacheHandle":
        backbone = resolve_backbone(model)
        existing = backbone.model.__dict__.get(cls._ATTR)
        if existing is not None:
            if existing.layout != layout:
                raise PrefixCacheError(
                    f"this model is already attached to a prefix cache of another layout ({existing.layout}); "
                    "remove() that handle first"
                )
            cls._check_weights(model, layout)
            return existing
        block = first_tuned_block(model)
        if block != layout.block:
            raise PrefixCacheError(
                f"the cache holds the input of block {layout.block}, but this model's first tuned block is {block}: "
                "build the cache on the model you train (after applying the adapter)"
            )
        scl = block < backbone.num_layers and _scl_delta_source(backbone.blocks[block])
        if scl != (layout.parts == 2):
            raise PrefixCacheError(
                "the cache was built for " + ("an SCL delta skip" if layout.parts == 2 else "a model without an SCL "
                "delta skip") + " at this block, but the model " + ("has none" if layout.parts == 2 else "has one")
            )
        if layout.hidden_size != backbone.hidden_size:
            raise PrefixCacheError(f"the cache's width {layout.hidden_size} is not the model's {backbone.hidden_size}")
        cls._check_weights(model, layout)
        handle = cls(model, layout)
        backbone.model.__dict__[cls._ATTR] = handle
        return handle

    @staticmethod
    def _check_weights(model: nn.Module, layout: PrefixLayout) -> None:
        """Rows computed by other frozen weights (another checkpoint of the same shape, a prefix changed
        in place, another dtype) would silently feed the tuned block other hidden states than its images."""
        problem = prefix_weights_mismatch(layout.prefix_weights, model, layout.block)
        if problem:
            raise PrefixCacheError(
                f"the cache was built with other frozen weights than this model's ({problem}): its rows are not "
                "what this model computes from the images. Build the cache on the model you train, after loading "
                "its weights"
            )

    def remove(self) -> None:
        """Restores the real forwards; the model runs only from images again."""
        for module, previous in reversed(self._patched):
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
        self._patched.clear()
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        if self._model.__dict__.get(self._ATTR) is self:
            del self._model.__dict__[self._ATTR]

    def __enter__(self) -> "PrefixCacheHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
