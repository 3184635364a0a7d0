"""The train subset's hidden states at the first tuned block, grabbed during a full NC pass.

``NCTrainer`` measures the train subset at every evaluation. When the blocks below the first
tuned one are frozen (Layer FT, SCL FT, head FT, a linear probe) their output for an image never
changes, so later evaluations only need to run the model from that block on
(:class:`hf_nc.prefix_cache.PrefixCacheHandle`). Rather than a separate pre-pass
(:meth:`hf_nc.prefix_cache.PrefixCache.build`, which runs the prefix once more), the rows are
grabbed by hooks during the first evaluation's ordinary full pass: that pass also measures NC of
every block, the frozen ones included, so the first evaluation costs exactly one forward pass
over the subset, and every later one the blocks from the cut on.

A row is what a :class:`~hf_nc.prefix_cache.PrefixCache` row is: the input of the first tuned
block ``(T, d)`` (the last block's output for a linear probe), followed by the frozen copy's own
output for SCL's delta skip ``(2T, d)``, so the model runs from it through the same pass-through
forwards, and the tuned block sees exactly the hidden states it sees on images.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..backbones import Backbone
from ..prefix_cache import PrefixLayout
from ..prefix_cache.checks import prefix_weights


def _first_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class StopAtClassifier(Exception):
    """Raised after the classifier's input is recorded: NC of the train subset needs no logits or loss."""


class ClassifierStop:
    """Context manager: a forward pre-hook on the classifier that ends the forward there.

    Register it after :class:`~hf_nc.features.LayerFeatures` (hooks run in registration order), so
    the classifier's input is recorded before the forward stops; run the model inside
    ``try: ... except StopAtClassifier: pass``. A model without a classifier runs to its end.
    """

    def __init__(self, backbone: Backbone):
        self.classifier = backbone.classifier
        self._handle = None

    def __enter__(self) -> "ClassifierStop":
        if self.classifier is not None:
            def stop(_module, _inputs):
                raise StopAtClassifier

            self._handle = self.classifier.register_forward_pre_hook(stop)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class SubsetRows:
    """Cached rows of the train subset, batch by batch, and the layout the model runs them with.

    Attributes:
        layout: What a row holds (:class:`~hf_nc.prefix_cache.PrefixLayout`).
        batches: ``[{"pixel_values": (B, parts*T, d), "labels": (B,)}]`` on the CPU, in the order
            of the pass that grabbed them.
    """

    def __init__(self, layout: PrefixLayout, batches: list[dict]):
        self.layout, self.batches = layout, batches

    @property
    def nbytes(self) -> int:
        return sum(b["pixel_values"].numel() * b["pixel_values"].element_size() for b in self.batches)

    def close(self) -> None:
        """Drops the rows (the same call as :meth:`PrefixCache.close`)."""
        self.batches = []


class RowCapture:
    """Hooks that grab each batch's rows at block ``cut`` while the full forward goes on.

    After each forward, :meth:`take` stores the batch's rows with its labels; rows stop being kept
    (and :meth:`result` returns ``None``) once they would exceed ``budget_bytes``.

    Args:
        backbone: The model's backbone.
        cut: The first tuned block, ``1..num_layers`` (``num_layers``: after the last block).
        budget_bytes: Largest total size of the rows kept.
    """

    def __init__(self, backbone: Backbone, cut: int, budget_bytes: int):
        if not 0 < cut <= backbone.num_layers:
            raise ValueError(f"cut must be in 1..{backbone.num_layers}, got {cut}")
        self.backbone, self.cut, self.budget = backbone, cut, budget_bytes
        self._handles: list = []
        self._hidden: Optional[torch.Tensor] = None
        self._ref: Optional[torch.Tensor] = None
        self._returns_tensor: Optional[bool] = None
        self._parts: Optional[int] = None
        self._batches: list[dict] = []
        self._size = 0
        self.over_budget = False

    def __enter__(self) -> "RowCapture":
        blocks, cut = self.backbone.blocks, self.cut

        def below(_module, _args, output):  # the frozen block under the cut: the blocks' output format
            self._returns_tensor = isinstance(output, torch.Tensor)
            if cut == len(blocks):  # linear probe: the row is the last block's output
                self._hidden = _first_tensor(output).detach()

        self._handles.append(blocks[cut - 1].register_forward_hook(below))
        if cut < len(blocks):
            def block_input(_module, args, kwargs):
                self._hidden = (args[0] if args else kwargs["hidden_states"]).detach()

            self._handles.append(blocks[cut].register_forward_pre_hook(block_input, with_kwargs=True))
            base = getattr(blocks[cut], "base_layer", None)
            if isinstance(base, torch.nn.Module):
                # SCL's delta source runs its frozen block beside the tuned copy: that output is cached too
                def frozen_output(_module, _args, output):
                    self._ref = _first_tensor(output).detach()

                self._handles.append(base.register_forward_hook(frozen_output))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def take(self, labels: torch.Tensor) -> None:
        """Keeps the rows of the forward that just ran, with the batch's ``labels``."""
        hidden, ref = self._hidden, self._ref
        self._hidden = self._ref = None
        if self.over_budget:
            return
        if hidden is None or hidden.dim() != 3:
            self._give_up()
            return
        parts = 1 if ref is None else 2
        if self._parts is None:
            self._parts = parts
        if parts != self._parts:  # the model changed its mind between batches: do not guess
            self._give_up()
            return
        rows = hidden if ref is None else torch.cat([hidden, ref.to(hidden.dtype)], dim=1)
        self._size += rows.numel() * rows.element_size()
        if self._size > self.budget:
            self._give_up()
            return
        self._batches.append({"pixel_values": rows.to("cpu"), "labels": labels.detach().to("cpu")})

    def _give_up(self) -> None:
        self.over_budget, self._batches = True, []

    def result(self) -> Optional[SubsetRows]:
        """The grabbed rows, or ``None`` (nothing grabbed, over the budget, an unknown output format)."""
        if self.over_budget or not self._batches or self._returns_tensor is None:
            return None
        first = self._batches[0]["pixel_values"]
        tokens = first.shape[1] // self._parts
        layout = PrefixLayout(block=self.cut, num_tokens=tokens, hidden_size=first.shape[2], parts=self._parts,
                              dtype=first.dtype, block_returns_tensor=self._returns_tensor,
                              prefix_weights=prefix_weights(self.backbone.model, self.cut))
        return SubsetRows(layout, self._batches)
