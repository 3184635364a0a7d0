"""How well a score predicts accuracy: rank correlations, top-1 regret, bootstrap intervals.

All functions take the ORIENTED score (higher predicts better, :func:`~hf_nc.selection.
scores.oriented`) and the ground-truth accuracy of the same items (candidate models or
blocks). Non-finite oriented scores (a score that could not be computed) rank last; scores
equal up to float rounding (:data:`TIE_RTOL`) are ties (:func:`merge_ties`).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

KEYS = ("kendall_tau", "weighted_tau", "spearman")
# Scores closer than this share of the largest |score| are ties: some scores are constant by construction
# on some data (H-score is K - 1 whenever N <= d; nc2_etf of K = 2 depends on the class counts only), and
# their float64 rounding (~1e-13) otherwise decided correlations, regrets and chosen blocks.
TIE_RTOL = 1e-9


def merge_ties(values: Sequence[float], rtol: float = TIE_RTOL) -> np.ndarray:
    """float64 ``values`` in which finite values within ``rtol * max|finite value|`` of a smaller one
    (the smallest of their group) are set equal to it; non-finite values are left as they are."""
    v = np.array(values, dtype=np.float64)
    fin = np.flatnonzero(np.isfinite(v))
    if len(fin) < 2:
        return v
    tol = rtol * float(np.max(np.abs(v[fin])))
    order = fin[np.argsort(v[fin], kind="stable")]
    start = v[order[0]]
    for i in order[1:]:
        if v[i] - start <= tol:
            v[i] = start
        else:
            start = v[i]
    return v


def _finite(score: Sequence[float]) -> np.ndarray:
    s = merge_ties(score)
    # -inf/NaN = "could not be computed": below every real value, ties among themselves
    low = np.nanmin(s[np.isfinite(s)]) - 1.0 if np.isfinite(s).any() else 0.0
    return np.where(np.isfinite(s), s, low)


def _accuracies(accuracy: Sequence[float]) -> np.ndarray:
    """float64 accuracies, every one finite: a NaN made Kendall and Spearman NaN but left weighted tau a
    finite number (scipy's weightedtau ranks it), and made the top-1 regret NaN."""
    a = np.asarray(accuracy, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(a)).tolist()
    if bad:
        raise ValueError(f"accuracies must be finite, got {a[bad].tolist()} at positions {bad}: leave out items without "
                         "an accuracy (e.g. a diverged run) rather than passing NaN")
    return a


def correlations(score: Sequence[float], accuracy: Sequence[float]) -> dict[str, float]:
    """Kendall's tau-b, weighted tau (``scipy.stats.weightedtau``, hyperbolic weights on rank,
    as NCTI and LogME report it) and Spearman's rho between score and accuracy.

    NaN when fewer than 2 items or either side is constant (JSON writers turn it into null).
    """
    from scipy import stats

    s, a = _finite(score), _accuracies(accuracy)
    if len(s) != len(a):
        raise ValueError(f"score and accuracy lengths differ: {len(s)} != {len(a)}")
    if len(s) < 2 or np.ptp(s) == 0 or np.ptp(a) == 0:
        return {k: float("nan") for k in KEYS}
    return {
        "kendall_tau": float(stats.kendalltau(s, a).statistic),
        "weighted_tau": float(stats.weightedtau(s, a).statistic),
        "spearman": float(stats.spearmanr(s, a).statistic),
    }


def top1_regret(score: Sequence[float], accuracy: Sequence[float]) -> float:
    """Best accuracy minus the accuracy of the item the score ranks first (ties: the mean of the
    tied items' accuracies). 0 = the score picks the best item."""
    s, a = _finite(score), _accuracies(accuracy)
    return float(a.max() - a[s == s.max()].mean())


def bootstrap(score: Sequence[float], accuracy: Sequence[float], *, num_samples: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals (items resampled with replacement) of each correlation.

    Resamples in which a side is constant are skipped; an interval is ``(nan, nan)`` when
    fewer than half the resamples were usable. With few items (say < 10) the intervals are
    wide: that is the honest answer.
    """
    s, a = _finite(score), _accuracies(accuracy)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in KEYS}
    for _ in range(num_samples):
        idx = rng.integers(0, len(s), len(s))
        c = correlations(s[idx], a[idx])
        for k in KEYS:
            if math.isfinite(c[k]):
                draws[k].append(c[k])
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: ((float(np.percentile(v, lo)), float(np.percentile(v, hi))) if len(v) >= num_samples / 2 else (float("nan"), float("nan")))
            for k, v in draws.items()}


def score_correlations(oriented_scores: Mapping[str, Mapping[str, float]], accuracies: Mapping[str, float], *,
                       num_bootstrap: int = 0, seed: int = 0) -> dict[str, dict]:
    """``{score: {kendall_tau, weighted_tau, spearman, top1_regret, n}}`` over the items that have
    an accuracy. ``oriented_scores``: ``{item: {score: oriented value}}``. With ``num_bootstrap``
    > 0 each entry also has ``kendall_tau_ci``, ``weighted_tau_ci`` and ``spearman_ci``: 95%
    percentile-bootstrap intervals (:func:`bootstrap`, items resampled; on a handful of items
    they are wide, which is the honest answer)."""
    items = [i for i in oriented_scores if i in accuracies]
    bad = [i for i in items if not math.isfinite(float(accuracies[i]))]
    if bad:
        raise ValueError(f"accuracies must be finite, got {[accuracies[i] for i in bad]} for {bad}: leave out items without "
                         "an accuracy (e.g. a diverged run) rather than passing NaN")
    names = sorted({n for i in items for n in oriented_scores[i]})
    out = {}
    for name in names:
        s = [oriented_scores[i].get(name, -math.inf) for i in items]
        a = [float(accuracies[i]) for i in items]
        out[name] = {**correlations(s, a), "top1_regret": top1_regret(s, a) if items else float("nan"), "n": len(items)}
        if num_bootstrap > 0:
            ci = bootstrap(s, a, num_samples=num_bootstrap, seed=seed) if len(items) >= 2 else {k: (math.nan, math.nan) for k in KEYS}
            out[name].update({k + "_ci": list(v) for k, v in ci.items()})
    return out
