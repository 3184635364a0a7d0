"""Which block to tune with SCL FT or Layer FT, from the per-block NC1 curve of the frozen model.

The rule (a heuristic, to be validated by ``recipes/transfer_study.py``) works on
``log10(NC1)`` of each block's pooled features on the downstream TRAINING data, frozen model.
Early blocks are general and their features are little collapsed on the downstream classes;
later blocks collapse them more, until the curve flattens (further frozen blocks add little)
or rises again (blocks specialised to the source task). With ``lo``/``hi`` the smallest and
largest log-NC1 over the blocks and ``threshold = lo + tolerance * (hi - lo)``:

- ``method="scl"`` (tune block b, skip connection to the classifier): the KNEE, i.e. the
  EARLIEST block with ``log10(NC1) <= threshold``: the first block whose frozen features are
  already about as collapsed as any block gets. Later frozen blocks stop improving downstream
  collapse, so the skip lets this still-general block's features collapse on the downstream
  data and reach the classifier directly, with the fewest blocks in the trained graph.
- ``method="layer"`` (tune block b only, no skip): the block AFTER WHICH NC1 STOPS
  DECREASING, i.e. the minimum of the curve (ties to the later block). On a curve that
  decreases to the end that is the last block, the usual Layer FT choice; when the last
  blocks raise NC1 again (source-specific), it is the block before they do.

A flat curve (``hi - lo < min_log_range``) carries no signal: both methods then return the
last block. Blocks with a non-finite NC1 (constant features) are never chosen.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

from torch import nn

from . import _measure

METHODS = ("scl", "layer")

RULES = {
    "scl": ("earliest block whose log10(NC1) on the downstream training data is within `tolerance` of the "
            "curve's log range above its minimum (the knee: later frozen blocks stop improving collapse)"),
    "layer": "block with the lowest NC1 on the downstream training data (after it NC1 stops decreasing; ties: later block)",
}


@dataclass
class LayerSuggestion:
    """A block to tune, the per-block NC1 curve it came from, and why.

    ``block`` is a 0-based index into the model's blocks (``LayerFTConfig``/``SCLConfig``
    take it as is).
    """

    block: int
    method: str
    nc1_per_layer: list[float]
    rule: str
    reason: str
    tolerance: float
    model: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["nc1_per_layer"] = [v if math.isfinite(v) else None for v in self.nc1_per_layer]
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "LayerSuggestion":
        d = dict(d)
        d["nc1_per_layer"] = [float("nan") if v is None else float(v) for v in d["nc1_per_layer"]]
        return cls(**d)

    def __str__(self) -> str:
        return f"tune block {self.block} ({self.method}): {self.reason}"


def _curve(nc1_per_layer) -> list[float]:
    if isinstance(nc1_per_layer, Mapping):
        keys = sorted(int(k) for k in nc1_per_layer if str(k).lstrip("-").isdigit())
        if keys != list(range(len(keys))):
            raise ValueError(f"per-layer NC1 must cover blocks 0..n-1, got blocks {keys}")
        return [float(nc1_per_layer[k] if k in nc1_per_layer else nc1_per_layer[str(k)]) for k in keys]
    return [float(v) for v in nc1_per_layer]


def choose_block(nc1_per_layer: Sequence[float] | Mapping, method: str = "scl", *, tolerance: float = 0.1, min_log_range: float = 0.05) -> LayerSuggestion:
    """Applies the rule of this module's docstring to a per-block NC1 curve (pure function).

    Args:
        nc1_per_layer: NC1 of blocks 0..n-1 (a sequence, or ``{block: nc1}`` whose other keys,
            e.g. ``"final"``, are ignored).
        method: ``"scl"`` (the knee) or ``"layer"`` (the minimum).
        tolerance: For ``"scl"``: share of the curve's log10 range above its minimum that
            still counts as "at the minimum" (0 = the minimum itself, 1 = block 0).
        min_log_range: Curves whose log10 range is below this (0.05 = NC1 varies by < 12%)
            count as flat: the last block is returned.

    Returns:
        A :class:`LayerSuggestion`; ``block`` is in ``[0, n)``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not 0 <= tolerance <= 1:
        raise ValueError(f"tolerance must be in [0, 1], got {tolerance}")
    curve = _curve(nc1_per_layer)
    logs = [math.log10(v) if math.isfinite(v) and v > 0 else None for v in curve]
    valid = [i for i, v in enumerate(logs) if v is not None]
    if not valid:
        raise ValueError(f"no block has a finite, positive NC1: {curve}")
    lo, hi = min(logs[i] for i in valid), max(logs[i] for i in valid)
    base = dict(method=method, nc1_per_layer=curve, rule=RULES[method], tolerance=tolerance)
    if hi - lo < min_log_range:
        return LayerSuggestion(block=valid[-1], reason=f"flat NC1 curve (log10 range {hi - lo:.3g} < {min_log_range}): no knee, last block", **base)
    if method == "layer":
        block = max(i for i in valid if logs[i] == lo)
        after = "the last block" if block == valid[-1] else f"NC1 rises after it (x{10 ** (max(logs[i] for i in valid if i > block) - lo):.3g} at most)"
        return LayerSuggestion(block=block, reason=f"lowest NC1 ({curve[block]:.4g}); {after}", **base)
    threshold = lo + tolerance * (hi - lo)
    block = min(i for i in valid if logs[i] <= threshold)
    best = max(i for i in valid if logs[i] == lo)
    reason = (f"first block with NC1 {curve[block]:.4g} <= {10 ** threshold:.4g} (within {tolerance:.0%} of the log range "
              f"[{10 ** lo:.4g}, {10 ** hi:.4g}] above the minimum, at block {best})")
    return LayerSuggestion(block=block, reason=reason, **base)


def suggest_layer(
    model: nn.Module | str,
    dataset,
    *,
    method: str = "scl",
    tolerance: float = 0.1,
    min_log_range: float = 0.05,
    num_classes: int | None = None,
    shots_per_class: int | None = None,
    batch_size: int = 64,
    device=None,
    seed: int = 0,
    degenerate_tol: float = 1e-10,
    progress: bool = True,
) -> LayerSuggestion:
    """The block to tune with SCL FT (``method="scl"``) or Layer FT (``"layer"``).

    Streams the frozen model over the downstream TRAINING split once (per-block NC1, no NCC
    pass; exact under torch.distributed, each rank its shard) and applies
    :func:`choose_block` (see there and this module's docstring for the rule; a heuristic).

    Args:
        model: A supported model object, a local path / Hub id, or ``"random:<path>"``.
        dataset: A name or path for :func:`hf_nc.data.load_image_dataset`, a ``DatasetDict``
            (its ``train`` split is used) or a ``Dataset`` with ``image``/``label`` columns.
        method, tolerance, min_log_range: The rule's parameters (:func:`choose_block`).
        num_classes: K; default: from the ``label`` column.
        shots_per_class, seed: Few-shot subset (dataset given by name only).
        device: Where to run (the model is moved there); default: the model's device.
        degenerate_tol: Blocks whose features barely vary (relative variation at most this)
            get NC1 = NaN and are never chosen.
    """
    net = _measure.load_candidate(model, seed=seed)
    train, _, k, _ = _measure.resolve_data(dataset, shots_per_class=shots_per_class, seed=seed)
    _measure.device_of(net, device)
    stats, _ = _measure.measure(net, train, num_classes or k, layers="all", batch_size=batch_size, progress=progress)
    curve = {key: _measure.compute(s, degenerate_tol)[0]["nc1"] for key, s in stats.items() if isinstance(key, int)}
    suggestion = choose_block(curve, method, tolerance=tolerance, min_log_range=min_log_range)
    suggestion.model = _measure.candidate_name(model)
    return suggestion
