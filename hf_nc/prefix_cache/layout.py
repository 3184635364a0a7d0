"""What a cached row holds (:class:`PrefixLayout`), and the error every part of the cache raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


class PrefixCacheError(ValueError):
    """The frozen-prefix cache would not reproduce the uncached run (or is used on the wrong model)."""


def training_autocast_dtype(args) -> Optional[torch.dtype]:
    """The autocast dtype a ``transformers.TrainingArguments`` trains (and evaluates) under:
    ``bf16`` -> ``torch.bfloat16``, ``fp16`` -> ``torch.float16``, else ``None``; what a prefix
    cache for that Trainer is built with (``PrefixCache.build(autocast_dtype=...)``)."""
    return torch.bfloat16 if getattr(args, "bf16", False) else torch.float16 if getattr(args, "fp16", False) else None


@dataclass(frozen=True)
class PrefixLayout:
    """What a cached row holds.

    Attributes:
        block: The first tuned block; the row holds its input. ``num_layers`` means "after the
            last block" (linear probe: the row holds the last block's output).
        num_tokens: Tokens per image ``T``.
        hidden_size: Width ``d``.
        parts: 1, or 2 when the frozen block ``block``'s own output is cached too (SCL delta).
        dtype: dtype of the cached hidden states.
        block_returns_tensor: Whether the blocks return a tensor (else a tuple led by one).
        prefix_weights: What the frozen weights the rows were computed with sum to
            (:func:`~hf_nc.prefix_cache.checks.prefix_weights`), checked when a model is attached;
            ``None``: not recorded (not checked). Not part of the layout's equality.
        autocast_dtype: The ``torch.autocast`` dtype the rows were computed under (``None``: none);
            a Trainer with other mixed precision refuses the cache (its rows would not be the
            states its training computes). Not part of the layout's equality.
    """

    block: int
    num_tokens: int
    hidden_size: int
    parts: int
    dtype: torch.dtype
    block_returns_tensor: bool = True
    prefix_weights: Optional[tuple] = field(default=None, compare=False, repr=False)
    autocast_dtype: Optional[torch.dtype] = field(default=None, compare=False)

    @property
    def row_shape(self) -> tuple[int, int]:
        return (self.parts * self.num_tokens, self.hidden_size)

    @property
    def row_bytes(self) -> int:
        return self.parts * self.num_tokens * self.hidden_size * torch.empty((), dtype=self.dtype).element_size()
