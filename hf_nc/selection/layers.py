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

Other rules (:func:`suggest_layer`'s ``rule``): any score of
:data:`hf_nc.selection.scores.SCORES` computed on each block's pooled training features
(the block with the best oriented score, e.g. ``rule="logme"``), or ``rule="probe"``: the
block whose frozen features linearly probe best on a validation split (never the test split).
``docs/SELECTION.md`` measures these rules against the study's per-block fine-tuned
accuracies and against fixed blocks; read it before trusting any of them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np
from torch import nn

from . import _measure
from . import scores as _scores

METHODS = ("scl", "layer")
RULE_NAMES = ("nc1", "probe", *_scores.SCORES)

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


def choose_block_by_score(values: Sequence[float], score: str, method: str = "scl") -> LayerSuggestion:
    """The block with the best oriented ``score`` (higher is better after the registry's
    direction; ties: the later block, which puts more of the backbone in the trained graph's
    reach only when the evidence is equal). Non-finite values are never chosen.

    ``values`` is the per-block score (blocks 0..n-1); ``score`` a name of
    :data:`hf_nc.selection.scores.SCORES` or ``"probe"`` (validation accuracy, higher is better).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    direction = 1 if score == "probe" else _scores.get_score(score).direction
    vals = [float(v) for v in values]
    valid = [i for i, v in enumerate(vals) if math.isfinite(v)]
    if not valid:
        raise ValueError(f"no block has a finite {score}: {vals}")
    best = max(direction * vals[i] for i in valid)
    block = max(i for i in valid if direction * vals[i] == best)
    what = "validation probe accuracy" if score == "probe" else score
    rule = f"block with the {'highest' if direction > 0 else 'lowest'} {what} of its frozen pooled features"
    return LayerSuggestion(block=block, method=method, nc1_per_layer=[], rule=rule, tolerance=0.0,
                           reason=f"{'highest' if direction > 0 else 'lowest'} {what} ({vals[block]:.4g}) of {len(vals)} blocks",
                           extra={"rule": score, f"{score}_per_layer": [v if math.isfinite(v) else None for v in vals]})


def _validation_split(dataset, train, fraction: float, seed: int):
    """``(fit, validation)``: the dataset's own ``validation`` split when it has one, else a
    seeded stratified ``fraction`` of the training split held out (the probe is fitted on
    the rest). The test split is never read."""
    if hasattr(dataset, "keys") and "validation" in dataset:
        return train, dataset["validation"]
    from ..data import stratified_indices

    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(train["label"])
    held = stratified_indices(labels, max(int(round(fraction * len(labels))), len(np.unique(labels))), seed=seed)
    rest = np.setdiff1d(np.arange(len(labels)), held)
    return train.select(rest.tolist()), train.select(held.tolist())


def suggest_layer(
    model: nn.Module | str,
    dataset,
    *,
    method: str = "scl",
    rule: str = "nc1",
    validation_fraction: float = 0.2,
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

    Streams the frozen model over the downstream TRAINING split once (per-block pooled
    features; exact under torch.distributed, each rank its shard) and applies ``rule``:

    - ``"nc1"`` (default): :func:`choose_block` on the per-block NC1 curve (the knee for SCL,
      the minimum for Layer FT; a heuristic, see this module's docstring);
    - a score name of :data:`hf_nc.selection.scores.SCORES` (``"logme"``, ``"hscore_shrinkage"``,
      ``"ncti"`` pooled over the blocks, ...): :func:`choose_block_by_score`, the block whose
      frozen training features score best;
    - ``"probe"``: the block whose frozen features linearly probe best (the standardised
      logistic regression of :func:`hf_nc.probe.linear_probe`) on a validation split: the
      dataset's ``validation`` split; for a dataset given by name, ``validation_fraction`` of
      the training images drawn outside the few-shot subset (``load_image_dataset``'s
      ``validation_split``); for a ``DatasetDict`` without one, a stratified
      ``validation_fraction`` of its training split (the probe is fitted on the rest). The
      test split is never read.

    Cost, relative to one fine-tuning run: every rule is one forward pass over the training
    data (``"probe"``: plus one over the validation split and one small logistic regression
    per block; ``"logme"``: one d x d eigendecomposition per block). One fine-tuning run of
    the study's protocol is 30 epochs of forward + backward passes (about 3 forward passes
    each), i.e. ~90 forward passes over the same data: a rule costs ~1-2% of one run, and
    nothing like the n runs of a block sweep it replaces.

    Args:
        model: A supported model object, a local path / Hub id, or ``"random:<path>"``.
        dataset: A name or path for :func:`hf_nc.data.load_image_dataset`, a ``DatasetDict``
            (its ``train`` split is used; ``validation`` for ``rule="probe"`` when present) or
            a ``Dataset`` with ``image``/``label`` columns.
        method: ``"scl"`` or ``"layer"``.
        rule: ``"nc1"``, ``"probe"`` or a score name (see above).
        validation_fraction: Share of the training split held out for ``rule="probe"`` when
            the dataset has no validation split.
        tolerance, min_log_range: The NC1 rule's parameters (:func:`choose_block`).
        num_classes: K; default: from the ``label`` column.
        shots_per_class, seed: Few-shot subset (dataset given by name only).
        device: Where to run (the model is moved there); default: the model's device.
        degenerate_tol: Blocks whose features barely vary (relative variation at most this)
            get NC1 = NaN and are never chosen.
    """
    if rule not in RULE_NAMES:
        raise ValueError(f"rule must be one of {RULE_NAMES}, got {rule!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    net = _measure.load_candidate(model, seed=seed)
    if isinstance(dataset, str) and rule == "probe":
        from ..data import load_image_dataset

        # validation drawn from the training images outside the few-shot subset (same subset)
        dataset = load_image_dataset(dataset, shots_per_class=shots_per_class, seed=seed, validation_split=validation_fraction)
        shots_per_class = None
    train, _, k, _ = _measure.resolve_data(dataset, shots_per_class=shots_per_class, seed=seed)
    k = num_classes or k
    _measure.device_of(net, device)
    fit, val = _validation_split(dataset, train, validation_fraction, seed) if rule == "probe" else (train, None)
    keep_blocks = rule != "nc1"
    stats, kept = _measure.measure(net, fit, k, layers="all", batch_size=batch_size, keep_blocks=keep_blocks, progress=progress)
    curve = {key: _measure.compute(s, degenerate_tol)[0]["nc1"] for key, s in stats.items() if isinstance(key, int)}
    blocks = sorted(curve)
    if rule == "nc1":
        suggestion = choose_block(curve, method, tolerance=tolerance, min_log_range=min_log_range)
    else:
        if rule == "probe":
            _, vkept = _measure.measure(net, val, k, layers="all", batch_size=batch_size, keep_blocks=True, progress=progress)
            values = [_measure.fit_probe(kept[b], kept["labels"], vkept[b], vkept["labels"])["test_accuracy"] for b in blocks]
        else:
            got = [_scores.compute_scores(kept[b], kept["labels"], [rule], num_classes=k) for b in blocks]
            if rule == "ncti":  # pooled over this model's blocks
                usable = [i for i, g in enumerate(got) if isinstance(g["ncti"], _scores.NCTITerms)]
                composite = dict(zip(usable, _scores.ncti_composite([got[i]["ncti"] for i in usable])))
                values = [composite.get(i, float("nan")) for i in range(len(blocks))]
            else:
                values = [float(g[rule]) for g in got]
            # constant features: no information, never chosen (as for NC1)
            values = [v if math.isfinite(curve[b]) or rule == "ncti" else float("nan") for b, v in zip(blocks, values)]
        suggestion = choose_block_by_score(values, rule, method)
        suggestion.nc1_per_layer = [float(curve[b]) for b in blocks]
    suggestion.model = _measure.candidate_name(model)
    return suggestion
