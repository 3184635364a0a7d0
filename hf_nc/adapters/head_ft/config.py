"""Configuration of head FT: train only chosen attention heads' slices of q/k/v/o."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional, Union

from .._base import NCAdapterConfig, as_index, as_index_list

PEFT_TYPE = "HFNC_HEAD_FT"
PROJECTIONS = ("q", "k", "v", "o")


@dataclass
class HeadFTConfig(NCAdapterConfig):
    """Head FT: trainable updates only on chosen attention heads.

    For every chosen head ``h`` of block ``l`` the adapter learns additive deltas for that head's
    slice of the attention projections: the head's ``head_dim`` output rows of q, k and v (and
    their bias entries) and its ``head_dim`` input columns of the output projection o. Only the
    deltas are stored (``(n_heads_chosen, head_dim, d)`` per q/k/v projection,
    ``(n_heads_chosen, d, head_dim)`` for o); the frozen rest of each projection is neither
    trained nor saved. Deltas start at zero (the adapted model equals the base model) and
    ``merge_and_unload`` adds them into the projection weights.

    Heads are assumed to be contiguous ``head_dim`` blocks of the projection outputs, the layout
    of every transformers vision attention (``view(B, T, num_heads, head_dim)``).

    Args:
        heads: ``{layer: [head, ...]}`` or ``{layer: "all"}``; negative layers count from the end.
            JSON turns keys into strings; they are converted back.
        projections: Which of ``"q"``, ``"k"``, ``"v"``, ``"o"`` get deltas (default all four).
        train_bias: Also learn the chosen heads' bias entries of q/k/v (where the base has bias).

    Example:
        >>> HeadFTConfig(heads={-1: "all", -2: [0, 3]})
    """

    PEFT_TYPE = PEFT_TYPE

    heads: Optional[dict[int, Union[list[int], str]]] = field(default=None, metadata={"help": "{layer: [heads] | 'all'}"})
    projections: list[str] = field(default_factory=lambda: list(PROJECTIONS), metadata={"help": "q, k, v, o"})
    train_bias: bool = field(default=True, metadata={"help": "Learn q/k/v bias entries of the chosen heads."})

    def __post_init__(self):
        super().__post_init__()
        if not self.heads:
            raise ValueError('HeadFTConfig needs heads={layer: [head, ...] or "all"}')
        if not isinstance(self.heads, Mapping):
            raise ValueError(f'HeadFTConfig.heads must be a dict {{layer: [head, ...] or "all"}}, got {self.heads!r}')
        heads = {}
        for layer, chosen in dict(self.heads).items():
            layer = as_index(layer, "HeadFTConfig.heads keys (block indices)", allow_str=True)
            if isinstance(chosen, str):
                if chosen != "all":
                    raise ValueError(f'HeadFTConfig.heads[{layer}] must be a list of head indices or "all", got {chosen!r}')
            else:
                chosen = as_index_list(chosen, f"HeadFTConfig.heads[{layer}]")
                if not chosen:
                    raise ValueError(f"HeadFTConfig.heads[{layer}] is empty")
            if layer in heads:
                raise ValueError(f"block {layer} is given twice in HeadFTConfig.heads")
            heads[layer] = chosen
        self.heads = heads
        self.projections = list(self.projections)
        bad = [p for p in self.projections if p not in PROJECTIONS]
        if bad or not self.projections:
            raise ValueError(f"projections must be a non-empty subset of {PROJECTIONS}, got {self.projections}")
