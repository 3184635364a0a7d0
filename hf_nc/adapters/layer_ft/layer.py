"""Tuner layer of Layer FT: a trainable copy of a block (or of one part of it)."""

from __future__ import annotations

from .._base import NCCopyLayer


class LayerFTLayer(NCCopyLayer):
    """Holds one trainable copy of the wrapped block/part per adapter."""

    copy_attr = "hfnc_layer_ft_copy"
    adapter_layer_names = ("hfnc_layer_ft_copy",)

    def __repr__(self) -> str:
        return "hfnc_layer_ft." + super().__repr__()
