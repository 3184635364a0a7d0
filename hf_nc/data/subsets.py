"""Data-scarce subsets: class subsets with label remapping, and stratified few-shot sampling."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import datasets

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict


@contextlib.contextmanager
def quiet_datasets():
    """Hide datasets' progress bars for quick internal maps, restoring the previous setting."""
    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.utils.enable_progress_bars()


def _class_label(ds: Dataset, label_column: str) -> ClassLabel:
    feat = ds.features[label_column]
    if not isinstance(feat, ClassLabel):
        raise TypeError(f"column '{label_column}' must be a ClassLabel, got {feat!r}")
    return feat


def resolve_classes(classes: Sequence[int | str], names: Sequence[str]) -> list[int]:
    """Class ids from ids or names; duplicates and unknown classes are errors."""
    ids = []
    for c in classes:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in names:
                raise ValueError(f"unknown class name {c!r}; known: {list(names)}")
            ids.append(list(names).index(c))
        else:
            i = int(c)
            if not 0 <= i < len(names):
                raise ValueError(f"class id {i} out of range 0..{len(names) - 1}")
            ids.append(i)
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate classes in {list(classes)}")
    return ids


def select_classes(data: Dataset | DatasetDict, classes: Sequence[int | str], label_column: str = "label"):
    """Keep only ``classes`` (ids or names) and remap their labels to ``0..k-1`` in the order given.

    The ClassLabel keeps the original names of the kept classes, e.g. classes ``[5, 6]`` of
    Fashion-MNIST become labels ``0 -> "Sandal"``, ``1 -> "Shirt"``.
    """
    if isinstance(data, DatasetDict):
        return DatasetDict({k: select_classes(v, classes, label_column) for k, v in data.items()})
    old = _class_label(data, label_column)
    ids = resolve_classes(classes, old.names)
    remap = np.full(old.num_classes, -1, dtype=np.int64)
    remap[ids] = np.arange(len(ids))
    labels = np.asarray(data[label_column])
    keep = np.flatnonzero(remap[labels] >= 0) if len(labels) else np.array([], dtype=np.int64)
    features = data.features.copy()
    features[label_column] = ClassLabel(names=[old.names[i] for i in ids])
    with quiet_datasets():
        return data.select(keep).map(
            lambda y: {label_column: remap[np.asarray(y, dtype=np.int64)].tolist()},
            batched=True,
            input_columns=[label_column],
            features=features,
        )


def few_shot_indices(labels: Sequence[int], shots_per_class: int, seed: int = 0, num_classes: int | None = None):
    """Indices of ``shots_per_class`` examples per class, drawn without replacement.

    Stratified and reproducible: the same (labels, shots, seed) always gives the same indices
    (returned sorted). Raises ``ValueError`` if a class has fewer than ``shots_per_class`` examples
    (classes listed by ``num_classes`` but absent count as having 0).
    """
    if shots_per_class < 1:
        raise ValueError("shots_per_class must be >= 1")
    labels = np.asarray(labels, dtype=np.int64)
    k = int(num_classes if num_classes is not None else (labels.max() + 1 if len(labels) else 0))
    rng = np.random.default_rng(seed)
    chosen = []
    short = {}
    for c in range(k):
        idx = np.flatnonzero(labels == c)
        if len(idx) < shots_per_class:
            short[c] = len(idx)
            continue
        chosen.append(rng.choice(idx, size=shots_per_class, replace=False))
    if short:
        raise ValueError(f"shots_per_class={shots_per_class} but these classes have fewer examples: {short}")
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=np.int64)


def sample_shots(ds: Dataset, shots_per_class: int, seed: int = 0, label_column: str = "label") -> Dataset:
    """A stratified, seeded few-shot subset of ``ds`` (see :func:`few_shot_indices`)."""
    k = _class_label(ds, label_column).num_classes
    return ds.select(few_shot_indices(ds[label_column], shots_per_class, seed, num_classes=k))


def stratified_indices(labels: Sequence[int], n: int, seed: int = 0, num_classes: int | None = None) -> np.ndarray:
    """Indices of a seeded, stratified subset of ``n`` of ``labels`` (returned sorted).

    Every class present in ``labels`` gets ``floor(n / K)`` or one more examples (fewer only when
    it has fewer; the remainder goes to the classes that still have some), so the subset keeps
    every class whenever ``n >= K``. ``n >= len(labels)`` returns all indices. The replacement for
    any "first N" or plain random "N of them" wherever a metric or a report is computed on it.

    Args:
        labels: integer class of each example.
        n: subset size (``>= 1``).
        seed: the same (labels, n, seed) always gives the same indices.
        num_classes: classes to spread over (default: the distinct values of ``labels``).

    Raises:
        ValueError: ``n < 1``, or ``n`` smaller than the number of classes present (the subset
            could not hold every class: say so rather than silently drop one).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if n < 1:
        raise ValueError(f"a subset needs n >= 1, got {n}")
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    present = np.unique(labels)
    if num_classes is not None:
        present = present[present < num_classes]
    if n < len(present):
        raise ValueError(f"a stratified subset of {n} cannot hold all {len(present)} classes present; use n >= {len(present)}")
    pools = {int(c): rng.permutation(np.flatnonzero(labels == c)) for c in present}
    take = {c: 0 for c in pools}
    left = n
    while left > 0:  # round-robin in a seeded class order: quotas differ by at most one
        open_classes = [c for c in pools if take[c] < len(pools[c])]
        share, extra = divmod(left, len(open_classes))
        order = rng.permutation(open_classes)
        for j, c in enumerate(order):
            add = min(share + (1 if j < extra else 0), len(pools[c]) - take[c])
            take[c] += add
            left -= add
    return np.sort(np.concatenate([pools[c][: take[c]] for c in pools]))


def stratified_subset(ds: Dataset, n: int | None, seed: int = 0, label_column: str = "label") -> Dataset:
    """A seeded, stratified subset of ``n`` rows of ``ds`` (see :func:`stratified_indices`), in
    the dataset's order; ``ds`` itself when ``n`` is None or ``>= len(ds)``.

    The replacement for ``ds.select(range(n))``: an image folder is sorted by class, so its first
    ``n`` rows may all be one class (e.g. ``--max_eval_samples``).
    """
    if n is None or n >= len(ds):
        return ds
    feat = ds.features[label_column]
    k = feat.num_classes if isinstance(feat, ClassLabel) else None
    return ds.select(stratified_indices(ds[label_column], n, seed=seed, num_classes=k))
