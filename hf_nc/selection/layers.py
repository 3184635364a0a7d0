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
block whose frozen features linearly probe best on a validation split (never the test split);
``rule="nc1_slope"``: the block whose own NC1 drop ``log10 NC1(b-1) - log10 NC1(b)`` is the
largest (the block that does the most collapsing); ``rule="few_steps"``: every candidate block
is TUNED for a few optimizer steps from the same initialisation (:func:`few_step_trials`) and
the one with the best validation accuracy wins (the only rule that looks at a tuned model; it
costs k short runs, see :func:`few_step_trials`). ``docs/SELECTION.md`` measures these rules against the study's per-block fine-tuned
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
from .correlation import merge_ties

METHODS = ("scl", "layer")
RULE_NAMES = ("nc1", "nc1_slope", "probe", "few_steps", *_scores.SCORES)

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
    # measured from the minimum, so the ends are exact: lo + 1.0 * (hi - lo) can round below hi, and
    # tolerance=1 then missed block 0 at the curve's maximum (about 1 curve in 30)
    block = min(i for i in valid if logs[i] - lo <= tolerance * (hi - lo))
    best = max(i for i in valid if logs[i] == lo)
    reason = (f"first block with NC1 {curve[block]:.4g} <= {10 ** threshold:.4g} (within {tolerance:.0%} of the log range "
              f"[{10 ** lo:.4g}, {10 ** hi:.4g}] above the minimum, at block {best})")
    return LayerSuggestion(block=block, reason=reason, **base)


def tunable_blocks(num_blocks: int, method: str) -> int:
    """How many blocks, from block 0, ``method`` can tune: every block for Layer FT, every block but the
    last for SCL FT (its skip runs from the tuned block to the classifier past the later blocks;
    ``SCLConfig`` refuses the last one).

    Raises:
        ValueError: for SCL FT on a model with one block.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n = num_blocks - 1 if method == "scl" else num_blocks
    if n < 1:
        raise ValueError(f"method={method!r} cannot tune any block of a {num_blocks}-block model (SCL FT needs a block below "
                         "the last): use method='layer'")
    return n


def choose_block_by_score(values: Sequence[float], score: str, method: str = "scl") -> LayerSuggestion:
    """The block with the best oriented ``score`` (higher is better after the registry's
    direction; ties, up to float rounding (:data:`~hf_nc.selection.correlation.TIE_RTOL`): the later
    block, which puts more of the backbone in the trained graph's reach only when the evidence is
    equal). Non-finite values are never chosen.

    ``values`` is the per-block score (blocks 0..n-1); ``score`` a name of
    :data:`hf_nc.selection.scores.SCORES` or ``"probe"`` (validation accuracy, higher is better).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    direction = 1 if score == "probe" else -1 if score == "nc1_slope" else _scores.get_score(score).direction
    vals = [float(v) for v in values]
    valid = [i for i, v in enumerate(vals) if math.isfinite(v)]
    if not valid:
        raise ValueError(f"no block has a finite {score}: {vals}")
    tied = merge_ties([direction * v for v in vals])  # equal up to rounding: a tie, not a win
    best = max(tied[i] for i in valid)
    block = max(i for i in valid if tied[i] == best)
    what = {"probe": "validation probe accuracy", "nc1_slope": "log10 NC1 slope"}.get(score, score)
    rule = f"block with the {'highest' if direction > 0 else 'lowest'} {what} of its frozen pooled features"
    return LayerSuggestion(block=block, method=method, nc1_per_layer=[], rule=rule, tolerance=0.0,
                           reason=f"{'highest' if direction > 0 else 'lowest'} {what} ({vals[block]:.4g}) of {len(vals)} blocks",
                           extra={"rule": score, f"{score}_per_layer": [v if math.isfinite(v) else None for v in vals]})


def nc1_slopes(nc1_per_layer: Sequence[float] | Mapping) -> list[float]:
    """Per-block NC1 slope ``log10 NC1(b) - log10 NC1(b-1)`` (block 0: ``log10 NC1(1) - log10
    NC1(0)``, the curve's first step); negative = the block collapses the classes further. A
    block next to a non-finite NC1 gets NaN. The rule ``"nc1_slope"`` picks the most negative."""
    curve = _curve(nc1_per_layer)
    logs = [math.log10(v) if math.isfinite(v) and v > 0 else math.nan for v in curve]
    if len(logs) < 2:
        return [math.nan] * len(logs)
    return [logs[1] - logs[0]] + [logs[b] - logs[b - 1] for b in range(1, len(logs))]


@dataclass
class BlockTrial:
    """A few optimizer steps of tuning one block from the model's initialisation, and the
    validation accuracy / loss after ``steps[i]`` steps (``seconds``: wall time of the trial,
    prefix cache included)."""

    block: int
    steps: list[int]
    validation_accuracy: list[float]
    validation_loss: list[float]
    seconds: float
    prefix_cache: bool

    def to_dict(self) -> dict:
        return asdict(self)


def few_step_trials(
    model: nn.Module,
    train,
    validation,
    *,
    method: str = "layer",
    blocks: Sequence[int] | None = None,
    steps: int = 40,
    eval_steps: Sequence[int] | None = None,
    run_steps: int | None = None,
    learning_rate: float = 3e-3,
    batch_size: int = 16,
    warmup_ratio: float = 0.05,
    seed: int = 0,
    prefix_cache: bool = True,
    device=None,
    eval_batch_size: int = 256,
) -> list[BlockTrial]:
    """Tunes each candidate block for ``steps`` optimizer steps and measures it on validation.

    Every trial starts from the same ``model`` (deep-copied; the argument is not changed) with
    the same data order (``seed``): Layer FT (``method="layer"``: ``LayerFTConfig(layers=[b])``)
    or SCL FT (``"scl"``: ``SCLConfig(layer=b)``), head trained, AdamW (no weight decay) at
    ``learning_rate`` on the recipes' schedule (linear warmup over ``warmup_ratio``, cosine
    decay) of a run of ``run_steps`` steps, stopped after ``steps``: the trial is the first
    ``steps`` steps of that run. No augmentation (the cache needs none and the study uses none).
    With ``prefix_cache`` the frozen blocks below ``b`` run once per image
    (:class:`hf_nc.PrefixCache`, exact), so a late block's trial is much cheaper than an early one's.

    Cost: ``len(blocks) * steps`` optimizer steps, the early blocks at about the price of a full
    forward + backward each, the late ones a fraction; ``docs/SELECTION.md`` states it measured in
    fine-tuning-run equivalents. The test split is never read.

    Args:
        model: An image-classification model whose classifier already has the downstream classes
            (re-initialise it first if it was trained for other labels, as the recipes do).
        train: The training split (``image``/``label`` columns).
        validation: The validation split, disjoint from ``train`` (never the test split).
        method: ``"layer"`` or ``"scl"``.
        blocks: Candidate blocks (default: every block the method can tune).
        steps: Optimizer steps per trial.
        eval_steps: Steps after which validation is measured (default: ``[steps]``); each <= steps.
        run_steps: Length of the run whose schedule the trial follows (default: ``steps``).
        learning_rate, batch_size, warmup_ratio, seed: The run's settings.
        prefix_cache: Train from a frozen-prefix cache (falls back, with a warning, where it would
            not be exact).
        device: Where to train; default: the model's device.

    Returns:
        One :class:`BlockTrial` per block, in ``blocks`` order.
    """
    import copy
    import time

    import torch
    from peft import get_peft_model
    from torch.utils.data import DataLoader
    from transformers import get_cosine_schedule_with_warmup

    from ..adapters import LayerFTConfig, SCLConfig
    from ..backbones import resolve_backbone
    from ..data import build_transforms, collate_fn
    from ..features import interpolate_positions, model_image_size
    from ..prefix_cache import PrefixCache

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for name, split in (("train", train), ("validation", validation)):
        if len(split) == 0:  # was "stack expects a non-empty TensorList" from the preprocessing
            raise ValueError(f"the {name} split has no images: the trials need images to train on and to measure")
    eval_steps = sorted({int(e) for e in (eval_steps or [steps])})
    if eval_steps[0] < 1 or eval_steps[-1] > steps:
        raise ValueError(f"eval_steps must lie in [1, steps={steps}], got {eval_steps}")
    run_steps = steps if run_steps is None else int(run_steps)  # 0 fails the check below (it used to mean "steps")
    if run_steps < steps:
        raise ValueError(f"run_steps ({run_steps}) must be >= steps ({steps})")
    allowed = list(range(tunable_blocks(resolve_backbone(model).num_layers, method)))
    blocks = list(allowed if blocks is None else blocks)
    bad = [b for b in blocks if b not in allowed]
    if bad:
        raise ValueError(f"blocks {bad} cannot be tuned with {method!r} (allowed: {allowed[0]}..{allowed[-1]})")
    dev = device if device is not None else next(model.parameters()).device
    transform = build_transforms(model, train=False)
    # preprocessed once for every block's trial (the images do not change: no augmentation)
    train_view, val_view = _Tensors(train.with_transform(transform)), _Tensors(validation.with_transform(transform))
    # a processor resized away from config.image_size (a checkpoint saved with --image_size): every pass
    # of the trial (training, evaluation, the prefix cache's build) interpolates, as the recipes' runs do
    resized = tuple(train_view.pixel_values.shape[-2:]) != model_image_size(model)
    out = []
    for b in blocks:
        start = time.perf_counter()
        net = copy.deepcopy(model).to(dev)
        if resized:
            interpolate_positions(net)
        config = LayerFTConfig(layers=[b]) if method == "layer" else SCLConfig(layer=b)
        net = get_peft_model(net, config)
        tr, va, handle = train_view, val_view, None
        if prefix_cache:
            cache = PrefixCache.build_or_none(net, train_view, collate_fn, batch_size=eval_batch_size, device=dev, progress=False)
            if cache is not None:
                handle = cache.attach(net)
                tr, va = cache, PrefixCache.build(net, val_view, collate_fn, batch_size=eval_batch_size, device=dev, progress=False)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
        # the recipes' schedule: the Trainer's cosine with warmup_steps = ceil(warmup_ratio * run_steps)
        sched = get_cosine_schedule_with_warmup(opt, math.ceil(warmup_ratio * run_steps), run_steps)
        gen = torch.Generator().manual_seed(seed)  # the same batches for every block
        accs, losses, step = [], [], 0
        net.train()
        while step < steps:  # epochs of a fresh permutation, batches of consecutive indices (the last one may be short)
            order = torch.randperm(len(tr), generator=gen).tolist()
            for i in range(0, len(order), batch_size):
                batch = collate_fn([tr[j] for j in order[i : i + batch_size]])
                batch = {k: v.to(dev) if hasattr(v, "to") else v for k, v in batch.items()}
                loss = net(**batch).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                if step in eval_steps:
                    acc, vloss = _evaluate(net, va, eval_batch_size, dev)
                    accs.append(acc)
                    losses.append(vloss)
                    net.train()
                if step >= steps:
                    break
        if handle is not None:
            handle.remove()
        out.append(BlockTrial(block=b, steps=eval_steps, validation_accuracy=accs, validation_loss=losses,
                              seconds=time.perf_counter() - start, prefix_cache=handle is not None))
    return out


class _Tensors:
    """A preprocessed split held as tensors: items ``{"pixel_values", "labels"}`` as the
    transformed dataset yields them (map-style, read-only)."""

    def __init__(self, view):
        import torch

        items = [view[i : i + 256] for i in range(0, len(view), 256)]  # batched reads: one processor call per slice
        self.pixel_values = torch.stack([x for it in items for x in it["pixel_values"]])
        self.labels = torch.as_tensor([int(y) for it in items for y in it["labels"]], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.pixel_values[i], "labels": self.labels[i]}


def _evaluate(net: nn.Module, data, batch_size: int, dev) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``net`` on ``data`` (eval mode, no gradients)."""
    import torch
    from torch.utils.data import DataLoader

    from ..data import collate_fn

    net.eval()
    correct, total, loss = 0, 0, 0.0
    with torch.no_grad():
        for batch in DataLoader(data, batch_size=batch_size, collate_fn=collate_fn):
            labels = batch.pop("labels").to(dev)
            logits = net(**{k: v.to(dev) if hasattr(v, "to") else v for k, v in batch.items()}).logits
            correct += int((logits.argmax(-1) == labels).sum())
            loss += float(torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum"))
            total += len(labels)
    return correct / total, loss / total


def choose_block_by_trials(trials: Sequence[BlockTrial], method: str = "layer", at: int = -1) -> LayerSuggestion:
    """The block whose trial has the highest validation accuracy after ``trials[i].steps[at]``
    steps (ties: the lower validation loss, then the earlier block). A trial whose accuracy is not
    finite is never chosen; a non-finite loss (a diverged trial) counts as the highest."""
    if not trials:
        raise ValueError("no trials")
    if not any(math.isfinite(t.validation_accuracy[at]) for t in trials):
        raise ValueError(f"no trial has a finite validation accuracy: {[t.validation_accuracy[at] for t in trials]}")

    def key_of(t: BlockTrial) -> tuple:  # NaN compares false both ways: max() kept whichever trial came first
        acc, loss = t.validation_accuracy[at], t.validation_loss[at]
        if not math.isfinite(acc):
            return (-math.inf, -math.inf, -t.block)
        return (acc, -loss if math.isfinite(loss) else -math.inf, -t.block)

    key = [key_of(t) for t in trials]
    best = trials[max(range(len(trials)), key=lambda i: key[i])]
    n = best.steps[at]
    return LayerSuggestion(
        block=best.block, method=method, nc1_per_layer=[], rule=f"block with the best validation accuracy after {n} steps of tuning",
        tolerance=0.0, reason=f"validation accuracy {best.validation_accuracy[at]:.3f} after {n} steps (of {len(trials)} blocks tried)",
        extra={"rule": "few_steps", "trials": [t.to_dict() for t in trials]})


def _head_for(model: nn.Module, train, num_classes: int, reset: bool | None, seed: int) -> nn.Module:
    """``model`` with a classifier for the dataset's classes: re-initialised (seeded, truncated
    normal with the config's ``initializer_range`` clipped at 2 std, zero bias, like the recipes) when ``reset``,
    or (``None``) when its labels differ from the dataset's class names."""
    import torch

    from ..backbones import resolve_backbone

    head = resolve_backbone(model).classifier
    if not isinstance(head, nn.Linear) or head.out_features != num_classes:
        raise ValueError(f"rule='few_steps' needs a linear classifier with {num_classes} outputs (the dataset's classes), got "
                         f"{head!r}: load the model with num_labels={num_classes} (ignore_mismatched_sizes=True)")
    names = list(getattr(train.features["label"], "names", None) or [])
    id2label = getattr(model.config, "id2label", None) or {}
    trained = [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(num_classes)]
    if reset or (reset is None and trained != names):
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            w = torch.empty_like(head.weight, device="cpu")
            std = getattr(model.config, "initializer_range", 0.02)
            # normal clipped at +-2 std, from a private generator (the global RNG is left alone)
            w.normal_(0.0, std, generator=gen).clamp_(-2 * std, 2 * std)
            head.weight.copy_(w)
            head.bias.zero_()
    return model


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
    missing = np.setdiff1d(labels, labels[rest]).tolist()
    if missing:  # the probe / the trials would fit on no image of these classes (or on none at all)
        raise ValueError(f"holding out a validation share ({len(held)} of the {len(labels)} training images, at least one per "
                         f"class) leaves classes {missing[:20]} without a training image: pass a DatasetDict with a "
                         "'validation' split, or more images per class")
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
    steps: int = 40,
    run_steps: int | None = None,
    learning_rate: float = 3e-3,
    train_batch_size: int = 16,
    blocks: Sequence[int] | None = None,
    reset_head: bool | None = None,
) -> LayerSuggestion:
    """The block to tune with SCL FT (``method="scl"``) or Layer FT (``"layer"``).

    Streams the frozen model over the downstream TRAINING split once (per-block pooled
    features; exact under torch.distributed, each rank its shard) and applies ``rule`` to the blocks
    the method can tune (:func:`tunable_blocks`: SCL FT never suggests the last block, which
    ``SCLConfig`` refuses; the NC1 curve in the result still covers every block):

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
      test split is never read;
    - ``"nc1_slope"``: the block with the steepest NC1 drop (:func:`nc1_slopes`);
    - ``"few_steps"``: :func:`few_step_trials` on the ``blocks`` (default: all the method can
      tune), each tuned ``steps`` optimizer steps (batch ``train_batch_size``, ``learning_rate``,
      the schedule of a ``run_steps``-step run) from the same initialisation, then the best
      validation accuracy (validation split as for ``"probe"``). Its cost is not one forward
      pass: about ``len(blocks) * steps`` training steps, less with the prefix cache at late
      blocks (measured in ``docs/SELECTION.md``: 42-step trials of all 12 blocks of the tiny
      ViT against the study's 210-step runs are 2.4 runs' worth of steps, 3.6-3.8 runs of
      wall time with the trials' overheads on a shared CPU). It did not beat the best fixed
      block chosen on validation there.

    Cost, relative to one fine-tuning run: every rule but ``"few_steps"`` is one forward pass over the training
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
        steps, run_steps, learning_rate, train_batch_size, blocks: ``rule="few_steps"`` only (see
            :func:`few_step_trials`).
        reset_head: ``rule="few_steps"`` only: re-initialise the classifier (seeded) before the
            trials; default: when the model's labels (``config.id2label``) differ from the
            dataset's class names, as the recipes do. Its size must be the number of classes.
    """
    if rule not in RULE_NAMES:
        raise ValueError(f"rule must be one of {RULE_NAMES}, got {rule!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if blocks is not None and rule != "few_steps":  # would be ignored: the other rules score every block
        raise ValueError(f"blocks applies to rule='few_steps' only (the blocks it trials); rule={rule!r} scores every block")
    _measure.check_candidate(model)
    net = _measure.load_candidate(model, seed=seed)
    if isinstance(dataset, str) and rule in ("probe", "few_steps"):
        from ..data import load_image_dataset

        # validation drawn from the training images outside the few-shot subset (same subset)
        dataset = load_image_dataset(dataset, shots_per_class=shots_per_class, seed=seed, validation_split=validation_fraction)
        shots_per_class = None
    # the probe and few-step rules need no within-class variability (one image per class is fine)
    train, _, k, _ = _measure.resolve_data(dataset, shots_per_class=shots_per_class, seed=seed,
                                           need_within_class=rule not in ("probe", "few_steps"), num_classes=num_classes)
    _measure.device_of(net, device)
    fit, val = _validation_split(dataset, train, validation_fraction, seed) if rule in ("probe", "few_steps") else (train, None)
    if rule == "few_steps":
        import copy

        net = _head_for(copy.deepcopy(net), train, k, reset_head, seed)
        trials = few_step_trials(net, fit, val, method=method, blocks=blocks, steps=steps, run_steps=run_steps,
                                 learning_rate=learning_rate, batch_size=train_batch_size, seed=seed, device=device)
        suggestion = choose_block_by_trials(trials, method)
        suggestion.model = _measure.candidate_name(model)
        return suggestion
    keep_blocks = rule not in ("nc1", "nc1_slope")
    stats, kept = _measure.measure(net, fit, k, layers="all", batch_size=batch_size, keep_blocks=keep_blocks, progress=progress)
    # the probe rule on one image per class: NC1 is undefined there (reported NaN), the probes decide
    curve = {key: (_measure.compute(s, degenerate_tol)[0]["nc1"] if int(s.counts.max()) >= 2 else float("nan"))
             for key, s in stats.items() if isinstance(key, int)}
    blocks = sorted(curve)
    tunable = blocks[: tunable_blocks(len(blocks), method)]  # SCL: never the last block (SCLConfig refuses it)
    if rule == "nc1":
        suggestion = choose_block([curve[b] for b in tunable], method, tolerance=tolerance, min_log_range=min_log_range)
    elif rule == "nc1_slope":
        suggestion = choose_block_by_score(nc1_slopes(curve)[: len(tunable)], "nc1_slope", method)
    else:
        if rule == "probe":
            _, vkept = _measure.measure(net, val, k, layers="all", batch_size=batch_size, keep_blocks=True, progress=progress)
            values = [_measure.fit_probe(kept[b], kept["labels"], vkept[b], vkept["labels"])["test_accuracy"] for b in tunable]
        else:
            got = [_scores.compute_scores(kept[b], kept["labels"], [rule], num_classes=k) for b in tunable]
            if rule == "ncti":  # pooled over the blocks the method can tune
                usable = [i for i, g in enumerate(got) if isinstance(g["ncti"], _scores.NCTITerms)]
                composite = dict(zip(usable, _scores.ncti_composite([got[i]["ncti"] for i in usable])))
                values = [composite.get(i, float("nan")) for i in range(len(tunable))]
            else:
                values = [float(g[rule]) for g in got]
            # constant features: no information, never chosen (as for NC1)
            values = [v if math.isfinite(curve[b]) or rule == "ncti" else float("nan") for b, v in zip(tunable, values)]
            if not any(math.isfinite(v) for v in values):  # say why, not only "no block has a finite <rule>"
                why = {str(g["errors"][rule]) for g in got if rule in g.get("errors", {})}
                why = "; ".join(sorted(why)) or "the features of every block are (nearly) constant"
                raise ValueError(f"rule={rule!r}: no tunable block has a finite {rule} ({why}); pick another rule, e.g. 'nc1'")
        suggestion = choose_block_by_score(values, rule, method)
    suggestion.nc1_per_layer = [float(curve[b]) for b in blocks]
    suggestion.model = _measure.candidate_name(model)
    return suggestion
