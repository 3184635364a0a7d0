"""What hf-nc needs to know about a vision-transformer family, and its resolution on a model.

A :class:`BackboneSpec` is static knowledge about an architecture family (module names of
transformers 5.x); a :class:`Backbone` is that spec resolved on one model instance (the
actual modules, sizes and dotted paths). Everything else in hf-nc asks a ``Backbone``
instead of hard-coding module names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import nn

Pooling = Literal["cls", "mean"]


def _own_config(config):
    return config


@dataclass(frozen=True)
class BackboneSpec:
    """Module layout of one family of vision transformers (transformers 5.x names).

    Args:
        name: Registry key, e.g. ``"vit"``.
        model_types: ``config.model_type`` values handled by this spec.
        tower_paths: Candidate dotted paths (from the model root) of the vision tower,
            tried in order; ``""`` is the root itself (bare ``ViTModel`` etc.).
        blocks: Path of the ``nn.ModuleList`` of blocks, relative to the tower.
        final_norm: Path of the norm after the last block, relative to the tower.
        attention: Path of the attention module inside a block.
        qkvo: Names of the query, key, value and output projections inside ``attention``.
        parts: Block sub-modules grouped by part (``"attention"``, ``"mlp"``): the norm,
            sub-layer and layer-scale that belong to each residual branch.
        classifier_paths: Candidate paths (from the model root) of the classification head.
        pooling: How a block's tokens become one feature vector: ``"cls"`` (token 0) or
            ``"mean"`` (mean of the tokens after the prefix tokens).
        num_prefix_tokens: Non-patch tokens at the start of the sequence (CLS, distillation).
        vision_config: Maps ``model.config`` to the vision config holding the sizes
            (identity, or ``config.vision_config`` for dual-tower configs).
        embeddings: Path of the embeddings module (pixels -> tokens), relative to the tower.
        pre_blocks: Paths (relative to the tower) of the modules the tower runs, in order,
            between the embeddings and the first block (CLIP's ``pre_layrnorm``). With
            ``embeddings`` they form the stem that :mod:`hf_nc.prefix_cache` skips.
    """

    name: str
    model_types: tuple[str, ...]
    tower_paths: tuple[str, ...]
    blocks: str
    final_norm: str
    attention: str
    qkvo: tuple[str, str, str, str]
    parts: dict[str, tuple[str, ...]]
    classifier_paths: tuple[str, ...] = ("classifier",)
    pooling: Pooling = "cls"
    num_prefix_tokens: int = 1
    vision_config: Callable = field(default=_own_config)
    embeddings: str = "embeddings"
    pre_blocks: tuple[str, ...] = ()


def pool_tokens(hidden: torch.Tensor, pooling: Pooling, num_prefix_tokens: int) -> torch.Tensor:
    """Pools token features ``(B, T, d)`` into one vector per image ``(B, d)``."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        return hidden[:, num_prefix_tokens:].mean(dim=1)
    raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")


@dataclass
class Backbone:
    """A :class:`BackboneSpec` resolved on one model.

    Attributes:
        spec: The family's spec.
        model: The model it was resolved on (PEFT wrappers removed).
        tower_path: Dotted path of the vision tower from the model root (``""`` = root).
        blocks: The blocks, in order.
        final_norm: The norm after the last block.
        classifier: The classification head, or ``None`` for bare backbones.
        config: The vision config (sizes).
    """

    spec: BackboneSpec
    model: nn.Module
    tower_path: str
    blocks: nn.ModuleList
    final_norm: nn.Module
    classifier: nn.Module | None
    classifier_path: str | None
    config: object

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def num_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def _join(self, *parts: str) -> str:
        return ".".join(p for p in (self.tower_path, *parts) if p)

    @property
    def blocks_path(self) -> str:
        """Dotted path of the blocks' ModuleList, e.g. ``"vit.layers"``."""
        return self._join(self.spec.blocks)

    @property
    def final_norm_path(self) -> str:
        return self._join(self.spec.final_norm)

    @property
    def stem_paths(self) -> list[str]:
        """Dotted paths of the modules run before the first block, in order: the embeddings,
        then ``spec.pre_blocks`` (e.g. ``["vision_model.embeddings", "vision_model.pre_layrnorm"]``)."""
        return [self._join(self.spec.embeddings), *(self._join(p) for p in self.spec.pre_blocks)]

    def layer_index(self, layer: int) -> int:
        """Normalises a block index; negative counts from the end.

        Raises:
            ValueError: If ``layer`` is outside ``[-num_layers, num_layers)``.
        """
        n = self.num_layers
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise ValueError(f"layer index must be an int, got {layer!r}")
        if not -n <= layer < n:
            raise ValueError(
                f"layer {layer} is out of range for this {self.spec.name} model with {n} blocks: "
                f"valid indices are 0..{n - 1} (or -{n}..-1 from the end)"
            )
        return layer % n

    def block_path(self, layer: int) -> str:
        """Dotted path of block ``layer``, e.g. ``"vit.layers.3"``."""
        return f"{self.blocks_path}.{self.layer_index(layer)}"

    def attention_path(self, layer: int) -> str:
        return f"{self.block_path(layer)}.{self.spec.attention}"

    def projection_paths(self, layer: int) -> dict[str, str]:
        """Paths of the q, k, v and output projections of block ``layer``."""
        attn = self.attention_path(layer)
        return {role: f"{attn}.{name}" for role, name in zip("qkvo", self.spec.qkvo)}

    def part_paths(self, layer: int, part: str) -> list[str]:
        """Paths of the sub-modules of one part (``"attention"`` or ``"mlp"``) of a block."""
        if part not in self.spec.parts:
            raise ValueError(f"unknown block part {part!r}; {self.spec.name} has {sorted(self.spec.parts)}")
        return [f"{self.block_path(layer)}.{name}" for name in self.spec.parts[part]]

    def pool(self, hidden: torch.Tensor, pooling: Pooling | None = None) -> torch.Tensor:
        """Pools a block's output ``(B, T, d)`` to ``(B, d)`` by the family's convention."""
        return pool_tokens(hidden, pooling or self.spec.pooling, self.spec.num_prefix_tokens)
