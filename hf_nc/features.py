"""Pooled per-layer features of a vision transformer, collected in one forward pass.

Forward hooks placed through the backbone spec pool each chosen block's output tokens
``(B, T, d)`` into one vector per image ``(B, d)`` (the family's convention: CLS token, or
mean of the patch tokens; overridable), plus the ``"final"`` features: exactly what enters
the classifier when the model has one, else the pooled output of the final norm.
"""

from __future__ import annotations

import inspect
from typing import Callable, Iterable, Literal, Union

import torch
from torch import nn

from .backbones import Backbone, pool_tokens, resolve_backbone

FINAL = "final"
LayerKey = Union[int, str]
Layers = Union[Literal["all"], Iterable[int]]
Pooling = Union[Literal["cls", "mean"], Callable[[torch.Tensor], torch.Tensor], None]


def _first_tensor(output) -> torch.Tensor:
    # Blocks return a tensor or a tuple whose first item is the hidden states.
    return output[0] if isinstance(output, (tuple, list)) else output


class LayerFeatures:
    """Context manager that records pooled features of chosen blocks at every forward.

    Example::

        with LayerFeatures(model, layers="all") as feats:
            model(pixel_values=x)
        feats.features[3]        # (B, d) pooled output of block 3
        feats.features["final"]  # (B, d_cls) what enters the classifier

    Args:
        model: A supported transformers vision model (bare, with a head, or PEFT-wrapped).
        layers: ``"all"`` or block indices (negative count from the end).
        pooling: ``None`` for the family's convention, ``"cls"``, ``"mean"`` (mean of the
            tokens after the prefix tokens), or a callable ``(B, T, d) -> (B, d)``.
        include_final: Also record the ``"final"`` features.
    """

    def __init__(self, model: nn.Module, layers: Layers = "all", pooling: Pooling = None, include_final: bool = True):
        self.backbone: Backbone = resolve_backbone(model)
        self._handles: list = []
        self.layers = layers
        self.include_final = include_final
        self._pool = self._pooler(pooling)
        self.features: dict[LayerKey, torch.Tensor] = {}

    @property
    def layers(self) -> list[int]:
        """The recorded blocks, sorted, as non-negative indices."""
        return self._layers

    @layers.setter
    def layers(self, layers: Layers) -> None:
        """``"all"`` or block indices, checked and normalised as at construction (set later, ``[-1]`` used to be
        recorded under the key ``-1`` and a bad index to fail only at ``__enter__``). Not while recording: the
        hooks are registered on entry."""
        if self._handles:
            raise RuntimeError("LayerFeatures.layers cannot change while recording: set it outside the with block")
        indices = range(self.backbone.num_layers) if layers == "all" else [self.backbone.layer_index(i) for i in layers]
        self._layers = sorted(set(indices))

    def _pooler(self, pooling: Pooling) -> Callable[[torch.Tensor], torch.Tensor]:
        if callable(pooling):
            return pooling
        spec = self.backbone.spec
        return lambda h: pool_tokens(h, pooling or spec.pooling, spec.num_prefix_tokens)

    @property
    def keys(self) -> list[LayerKey]:
        """The keys ``features`` will hold: block indices, then ``"final"``."""
        return [*self.layers, *([FINAL] if self.include_final else [])]

    def _block_hook(self, index: int):
        def hook(_module, _inputs, output):
            self.features[index] = self._pool(_first_tensor(output)).detach()

        return hook

    def __enter__(self) -> "LayerFeatures":
        bb = self.backbone
        for i in self.layers:
            self._handles.append(bb.blocks[i].register_forward_hook(self._block_hook(i)))
        if self.include_final:
            if bb.classifier is not None:
                def classifier_input(_module, inputs):
                    self.features[FINAL] = inputs[0].detach()

                self._handles.append(bb.classifier.register_forward_pre_hook(classifier_input))
            else:
                def final_norm_output(_module, _inputs, output):
                    hidden = _first_tensor(output)
                    # Some towers (CLIP) pool before the final norm: (B, d) is already pooled.
                    self.features[FINAL] = (hidden if hidden.dim() == 2 else self._pool(hidden)).detach()

                self._handles.append(bb.final_norm.register_forward_hook(final_norm_output))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def pop(self) -> dict[LayerKey, torch.Tensor]:
        """Returns the features of the last forward and clears them."""
        missing = [k for k in self.keys if k not in self.features]
        if missing:
            raise RuntimeError(f"no features were recorded for {missing}: did the forward pass run those modules?")
        out, self.features = self.features, {}
        return out


def model_image_size(model: nn.Module) -> tuple[int, int] | None:
    """``(H, W)`` of the model's config (its vision tower's for CLIP/SigLIP), or ``None`` when it names none."""
    config = getattr(model, "config", None)
    config = getattr(config, "vision_config", None) or config
    size = getattr(config, "image_size", None)
    if isinstance(size, int):
        return size, size
    return tuple(size) if isinstance(size, (tuple, list)) and len(size) == 2 else None


def forward_pixels(model: nn.Module, pixel_values: torch.Tensor):
    """``model(pixel_values=...)``; inputs of another size than the model's ``image_size`` interpolate the
    position embeddings for that call (ViT, DeiT, CLIP/SigLIP towers, also ``CLIPForImageClassification``,
    whose forward has no ``interpolate_pos_encoding``); so ``--image_size`` works (DINOv2 always interpolates)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    size = model_image_size(inner)
    if size is None or tuple(pixel_values.shape[-2:]) == size:
        return model(pixel_values=pixel_values)
    handles = [m.register_forward_pre_hook(_always_interpolate, with_kwargs=True) for m in _interpolating_embeddings(model)]
    try:
        return model(pixel_values=pixel_values)
    finally:
        for h in handles:
            h.remove()


def interpolate_positions(model: nn.Module) -> int:
    """Makes every patch embedding that takes ``interpolate_pos_encoding`` (ViT, CLIP) always interpolate; returns how many.

    For inputs of another size than the model's ``image_size`` (the recipes' ``--image_size``, a
    checkpoint saved with a resized processor): every forward pass (training, evaluation, NCTrainer's
    train-subset pass, a prefix cache's build) then accepts the new size. DINOv2 always interpolates
    and needs nothing. A hook on the module, not a saved setting: a reloaded model needs
    ``interpolate_pos_encoding=True`` in its calls (or this again).
    """
    modules = _interpolating_embeddings(model)
    for m in modules:
        m.register_forward_pre_hook(_always_interpolate, with_kwargs=True)
    return len(modules)


def _interpolating_embeddings(model: nn.Module) -> list[nn.Module]:
    """The embedding modules whose forward takes ``interpolate_pos_encoding`` (each model's own flag, so
    no architecture is named here)."""
    return [m for m in model.modules()
            if type(m).__name__.endswith("Embeddings") and "interpolate_pos_encoding" in inspect.signature(m.forward).parameters]


def _always_interpolate(module, args, kwargs):
    return args, {**kwargs, "interpolate_pos_encoding": True}


@torch.no_grad()
def extract_features(model: nn.Module, pixel_values: torch.Tensor, layers: Layers = "all", pooling: Pooling = None) -> dict[LayerKey, torch.Tensor]:
    """Pooled features of one batch, per block and ``"final"``, from one forward pass."""
    with LayerFeatures(model, layers=layers, pooling=pooling) as recorder:
        forward_pixels(model, pixel_values)  # inputs of another size than config.image_size interpolate
        return recorder.pop()
