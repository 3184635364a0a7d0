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
    """Class ids from ids or names; duplicates and unknown classes are errors.

    A string that is one of ``names`` is that class, also when it looks like a number (class
    folders ``1``..``10`` sort as text, so folder ``"1"`` is id 0 and ``"10"`` id 1); any other
    integer or integer string is an id. Python ints are always ids.
    """
    names = [str(n) for n in names]
    if isinstance(classes, (str, int, np.integer)) or len(classes) == 0:  # (a string would be read per character)
        raise ValueError(f"classes must be a non-empty list of class ids or names (None keeps every class), got {classes!r}")
    ids = []
    for c in classes:
        if isinstance(c, str) and c.strip() in names:
            ids.append(names.index(c.strip()))
        elif isinstance(c, (int, np.integer)) or (isinstance(c, str) and c.strip().lstrip("-").isdigit()):
            i = int(c)
            if not 0 <= i < len(names):
                raise ValueError(f"class {c!r} is neither a class name nor a class id 0..{len(names) - 1}; names: {names}")
            ids.append(i)
        else:
            raise ValueError(f"unknown class name {c!r}; known: {names}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate classes in {list(classes)}")
    return ids


def check_label_range(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Every label is a class id ``0..num_classes-1`` (-1 is a ClassLabel's "no label"), else an
    error naming ``where`` (e.g. "the test split") and how many rows are outside."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {len(labels)} rows of {where} have labels outside 0..{num_classes - 1} "
                         f"(e.g. {int(labels[bad][0])}; -1 means unlabelled): drop them, e.g. "
                         "ds.filter(lambda y: y >= 0, input_columns='label')")


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
    labels = np.asarray(data[label_column], dtype=np.int64)
    check_label_range(labels, old.num_classes, "the data")  # -1 ("no label") would index remap[-1]
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


def few_shot_indices(labels: Sequence[int], shots_per_class: int, seed: int = 0, num_classes: int | None = None,
                     option: str = "shots_per_class"):
    """Indices of ``shots_per_class`` examples per class, drawn without replacement.

    Stratified and reproducible: the same (labels, shots, seed) always gives the same indices
    (returned sorted). Raises ``ValueError`` if a class has fewer than ``shots_per_class`` examples
    (classes listed by ``num_classes`` but absent count as having 0); ``option``: the name its
    messages give the count (e.g. ``validation_shots_per_class``).
    """
    if shots_per_class < 1:
        raise ValueError(f"{option} must be >= 1")
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
        raise ValueError(f"{option}={shots_per_class} but these classes have fewer examples: {short}")
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


def proportional_indices(labels: Sequence[int], fraction: float, seed: int = 0, num_classes: int | None = None,
                         option: str = "validation_split", keep_rest: bool = True) -> np.ndarray:
    """Indices of a seeded split holding ``fraction`` of every class (returned sorted).

    Each class present gets ``fraction x`` its count (largest-remainder rounding, so the total is
    ``round(fraction x len(labels))``), at least one and at most all but one of its examples:
    the split and the rest both keep every class, and an imbalanced dataset stays imbalanced in
    the same proportions (where :func:`stratified_indices` gives every class the same count).

    Args:
        labels: integer class of each example.
        fraction: in (0, 1).
        seed: the same (labels, fraction, seed) always gives the same indices.
        num_classes: classes to consider (default: the distinct values of ``labels``).
        option: the name messages give ``fraction``.
        keep_rest: leave at least one example of each class outside the split (False: a class
            may go into the split whole, e.g. when the rest is not used).

    Raises:
        ValueError: ``fraction`` outside (0, 1), or a class with fewer than 2 examples (it cannot
            be on both sides).
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"{option} must be a fraction in (0, 1), got {fraction!r}")
    labels = np.asarray(labels, dtype=np.int64)
    present = np.unique(labels)
    if num_classes is not None:
        present = present[present < num_classes]
    counts = {int(c): int(np.sum(labels == c)) for c in present}
    single = sorted(c for c, m in counts.items() if m < 2)
    if single and keep_rest:
        raise ValueError(f"{option}={fraction}: class(es) {single} have a single image, which cannot be both in the split "
                         "and in the rest; add images, drop the class, or give the dataset its own split")
    rng = np.random.default_rng(seed)
    exact = {c: fraction * m for c, m in counts.items()}
    take = {c: int(np.floor(q)) for c, q in exact.items()}
    left = int(round(fraction * sum(counts.values()))) - sum(take.values())
    if left > 0:  # largest remainders first, ties in a seeded order
        order = sorted(counts, key=lambda c: (-(exact[c] - take[c]), rng.random()))
        for c in order[:left]:
            take[c] += 1
    take = {c: min(max(t, 1), counts[c] - (1 if keep_rest else 0)) for c, t in take.items()}
    picked = [rng.permutation(np.flatnonzero(labels == c))[: take[c]] for c in counts]
    return np.sort(np.concatenate(picked)) if picked else np.array([], dtype=np.int64)


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
