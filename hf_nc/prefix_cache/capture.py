"""The build's forward hooks: grab the hidden states at the cut, then stop the forward there."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..backbones import Backbone
from .checks import _scl_delta_source
from .layout import PrefixCacheError


class _StopForward(Exception):
    """Raised by the build's capture hook: nothing after the cut point needs to run."""


def _model_inputs(batch: dict, input_key: str, label_key: str, device: torch.device) -> dict:
    """The batch as the Trainer passes it to the model, without labels (no loss needed): e.g. a
    collator's ``interpolate_pos_encoding=True`` reaches the embeddings as in training."""
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items() if k != label_key}
    return {"pixel_values": inputs.pop(input_key), **inputs}


class _Capture:
    """Hooks that grab the hidden states at the cut during the build, then stop the forward."""

    def __init__(self, backbone: Backbone, block: int):
        self.backbone, self.block = backbone, block
        self.scl = block < backbone.num_layers and _scl_delta_source(backbone.blocks[block])
        self.returns_tensor = True
        self._handles: list = []
        self._got: Optional[tuple] = None
        self._inside = self._probed = False

    def __enter__(self):
        blocks, block = self.backbone.blocks, self.block
        if block < len(blocks):
            self._handles.append(blocks[block].register_forward_pre_hook(self._pre, with_kwargs=True))
        else:
            self._handles.append(blocks[-1].register_forward_hook(self._post))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre(self, module, args, kwargs):
        if self._inside:  # the format probe below re-enters this hook (head FT: the block is its own frozen part)
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        ref = None
        if self.scl or not self._probed:
            # The frozen block on the same input: SCL's h̄_l, and (once) the blocks' output format.
            self._inside = True
            try:
                out = getattr(module, "base_layer", module)(*args, **kwargs)
            finally:
                self._inside = False
            self.returns_tensor, self._probed = isinstance(out, torch.Tensor), True
            ref = (out if self.returns_tensor else out[0]) if self.scl else None
        self._got = (hidden, ref)
        raise _StopForward

    def _post(self, module, args, output):
        self.returns_tensor = isinstance(output, torch.Tensor)
        self._got = (output if self.returns_tensor else output[0], None)
        raise _StopForward

    def run(self, model: nn.Module, inputs: dict) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        self._got = None
        try:
            model(**inputs)
        except _StopForward:
            pass
        if self._got is None:
            raise PrefixCacheError(f"the forward pass never reached block {self.block}: cannot cache its input")
        return self._got
