"""Configuration of Layer FT: full fine-tuning of selected blocks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from .._base import NCAdapterConfig, as_index_list

PEFT_TYPE = "HFNC_LAYER_FT"

Part = Literal["block", "attention", "mlp"]


@dataclass
class LayerFTConfig(NCAdapterConfig):
    """Layer FT (Li et al., TMLR 2024): fine-tune whole chosen blocks, freeze everything else.

    The chosen blocks (or only one part of each) are deep-copied; the copies are trained and
    saved, the originals stay untouched (``disable_adapter`` runs them; ``merge_and_unload``
    swaps the copies in). The classification head is trained and saved too (``train_head``).

    Args:
        layers: Block indices to tune; negative indices count from the end (``-1`` = last block).
            Out-of-range indices raise ``ValueError`` naming the model's range when applied.
        part: ``"block"`` (default: the whole block), ``"attention"`` (the attention sub-layer and
            its norm, and layer scale where the family has one) or ``"mlp"`` (the MLP sub-layer
            and its norm/layer scale). The parts come from the backbone spec.

    Example:
        >>> from peft import get_peft_model
        >>> model = get_peft_model(vit_for_classification, LayerFTConfig(layers=[-1]))
    """

    PEFT_TYPE = PEFT_TYPE

    layers: Optional[Union[list[int], int]] = field(default=None, metadata={"help": "Blocks to tune."})
    part: Part = field(default="block", metadata={"help": "'block', 'attention' or 'mlp'."})

    def __post_init__(self):
        super().__post_init__()
        if self.layers is None:
            raise ValueError("LayerFTConfig needs layers=[...] (block indices, negative from the end)")
        self.layers = as_index_list(self.layers, "LayerFTConfig.layers")
        if self.part not in ("block", "attention", "mlp"):
            raise ValueError(f"part must be 'block', 'attention' or 'mlp', got {self.part!r}")
