"""Input checks for the NC metrics engine; every problem is a ``ValueError`` naming it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_features(features: Any, dim: int | None = None) -> torch.Tensor:
    """Turns ``features`` into a 2-D floating tensor and checks its shape.

    Args:
        features: A tensor, NumPy array or nested sequence of shape (N, d).
        dim: The expected feature dimension d, or None to accept any.

    Returns:
        The features as a detached tensor (N, d), on their original device; integer input
        is cast to float64, floating input keeps its dtype (it is accumulated in float64
        later).

    Raises:
        ValueError: not 2-D, wrong d, or not a real number type.
    """
    # detached: the statistics are never part of a graph (features that require grad would
    # otherwise fail in the in-place / out= kernels that accumulate them)
    # a nested sequence of Python floats goes through NumPy (float64): torch.as_tensor alone made
    # it float32, rounding the features before they were measured
    x = features.detach() if isinstance(features, torch.Tensor) else torch.as_tensor(np.asarray(features))
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"features must be real numbers, got dtype {x.dtype}")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    if x.dim() != 2:
        raise ValueError(f"features must be 2-D (N, d), got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"features have dim {x.shape[1]}, expected dim {dim}")
    return x


def as_labels(labels: Any, num_samples: int, device: torch.device) -> torch.Tensor:
    """Turns ``labels`` into an int64 tensor (N,) on ``device``.

    Args:
        labels: A tensor, NumPy array or sequence of N integer class indices.
        num_samples: N, the number of feature rows they label.
        device: Where the features live.

    Returns:
        The labels, int64 (N,), on ``device``.

    Raises:
        ValueError: not 1-D, not integers, or a length that differs from N.
    """
    y = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
    if y.dim() != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.shape[0] != num_samples:
        raise ValueError(
            f"features and labels differ in length: {num_samples} feature rows, {y.shape[0]} labels"
        )
    return y.to(device=device, dtype=torch.int64)


def check_batch(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, row_sq: torch.Tensor | None = None
) -> None:
    """Checks a batch for non-finite features and out-of-range labels with one host sync.

    Args:
        x: Features (N, d).
        y: Labels (N,), int64, on the same device.
        num_classes: K; valid labels are 0..K-1.
        row_sq: Optional float64 squared row norms (N,) of the (shifted) features: NaN/inf
            in a row makes its norm non-finite, so checking N numbers replaces N*d.

    Raises:
        ValueError: NaN/inf in the features, or a label outside [0, K).
    """
    if x.shape[0] == 0:
        return
    lo, hi = torch.aminmax(y)
    finite = torch.isfinite(row_sq if row_sq is not None else x).all()
    ok_finite, ok_lo, ok_hi = torch.stack([finite, lo >= 0, hi < num_classes]).tolist()  # one sync
    if not ok_finite:
        if row_sq is not None and bool(torch.isfinite(x).all()):
            raise ValueError("features are too large: their squared norms overflow float64")
        raise ValueError("features contain NaN or inf values")
    if not (ok_lo and ok_hi):
        bad = torch.unique(y[(y < 0) | (y >= num_classes)])[:10].tolist()
        raise ValueError(f"labels outside [0, {num_classes}) (num_classes={num_classes}): {bad}")


def check_num_classes(num_classes: int) -> int:
    """Checks K >= 2 and returns it as an int.

    Raises:
        ValueError: K < 2 or not an integer.
    """
    if isinstance(num_classes, bool) or int(num_classes) != num_classes:
        raise ValueError(f"num_classes must be an integer, got {num_classes!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (K >= 2), got {num_classes}")
    return int(num_classes)


def check_nonempty(counts: torch.Tensor) -> None:
    """Checks that every class has at least one sample.

    Args:
        counts: Class counts (K,).

    Raises:
        ValueError: naming the classes with no samples.
    """
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        shown = empty[:20] + (["..."] if len(empty) > 20 else [])
        raise ValueError(f"{len(empty)} class(es) have no samples: {shown}")


WITHIN_CLASS_ZERO = "within-class variability (NC1, CDNV) is 0 by construction, not measured"


def check_within_class(counts: Any, consequence: str = WITHIN_CLASS_ZERO) -> None:
    """Checks that within-class variability can be estimated: some class has 2+ samples.

    With one sample per class every within-class scatter is 0 by construction, so NC1 and CDNV
    would read as perfect collapse whatever the features are.

    Args:
        counts: Class counts (K,) (tensor or array), every one >= 1.
        consequence: What a single sample in every class would make of the result (the message).

    Raises:
        ValueError: every class has a single sample.
    """
    if int(counts.max()) < 2:
        raise ValueError(
            f"every one of the {len(counts)} classes has a single sample: {consequence}; use at least 2 "
            "samples in some class (e.g. shots_per_class >= 2)"
        )


def as_classifier_weight(
    weight: Any, num_classes: int, dim: int, device: torch.device
) -> torch.Tensor:
    """Turns a classifier weight into a float64 tensor (K, d) on ``device``.

    Args:
        weight: Tensor/array of shape (K, d), e.g. ``nn.Linear(d, K).weight``.
        num_classes: K.
        dim: d.
        device: Where the statistics live.

    Returns:
        The weight, float64 (K, d).

    Raises:
        ValueError: wrong shape, or NaN/inf entries.
    """
    w = weight.detach() if isinstance(weight, torch.Tensor) else torch.as_tensor(weight)
    if tuple(w.shape) != (num_classes, dim):
        raise ValueError(
            f"classifier_weight must have shape (num_classes, dim) = ({num_classes}, {dim}), "
            f"got {tuple(w.shape)}"
        )
    w = w.to(device=device, dtype=torch.float64)
    if not torch.isfinite(w).all():
        raise ValueError("classifier_weight contains NaN or inf values")
    return w
