"""Statistics of the report: means with t confidence intervals, paired differences over seeds,
equivalence verdicts, Spearman and partial Spearman correlations.

Everything is over *seeds* (the unit that is independently repeated: the few-shot draw, the
validation draw, the initialisation and the data order); a paired difference pairs two
configurations' runs with the same seed (same training images, same test split).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

CONFIDENCE = 0.95


def _finite(values) -> np.ndarray:
    return np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def mean_ci(values, confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """``(mean, lo, hi, n)``: Student-t interval over the finite values (lo = hi = mean when n = 1)."""
    from scipy.stats import t

    v = _finite(values)
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    m = float(v.mean())
    if n == 1:
        return m, m, m, 1
    half = float(t.ppf(0.5 + confidence / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return m, m - half, m + half, n


def paired(a: dict, b: dict, confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """``mean_ci`` of ``a[seed] - b[seed]`` over the seeds both have (``a``, ``b``: ``{seed: value}``)."""
    seeds = sorted(set(a) & set(b))
    return mean_ci([a[s] - b[s] for s in seeds if a[s] is not None and b[s] is not None], confidence)


def verdict(lo: float, hi: float, margin: float, n: int) -> str:
    """Words for a CI ``[lo, hi]`` of a difference A - B, with equivalence margin ``margin``.

    * ``better`` / ``worse``: the CI excludes 0 and is not inside the margin (it need not lie beyond it:
      ``[+0.1, +1.0]`` points with a 0.5 margin is ``better``);
    * ``equivalent``: the CI lies inside ``[-margin, +margin]`` (TOST-style at this confidence);
    * ``not worse`` (non-inferior): the CI's lower end is above ``-margin``, not equivalent;
    * ``not better``: its upper end is below ``+margin``;
    * ``inconclusive``: the CI spans the margin on both sides.
    """
    if n < 2 or not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a (fewer than 2 paired seeds)"
    if -margin <= lo and hi <= margin:
        return "equivalent"
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    if lo > -margin:
        return "not worse"
    if hi < margin:
        return "not better"
    return "inconclusive"


def matches(lo: float, margin: float) -> bool:
    """"Matches" (non-inferior): the CI of A - B lies above ``-margin``."""
    return math.isfinite(lo) and lo > -margin


def spearman(x, y) -> Optional[tuple[float, float, int]]:
    """``(rho, p, n)`` over the finite pairs, or ``None`` when undefined (n < 3 or a constant side)."""
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return None
    res = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
    return float(res.statistic), float(res.pvalue), len(pairs)


def partial_spearman(x, y, controls: Sequence) -> Optional[tuple[float, float, int]]:
    """Spearman correlation of ``x`` and ``y`` controlling for ``controls`` (each a sequence like x):
    Pearson correlation of the residuals of rank(x) and rank(y) after least squares on the ranks of
    the controls (and a constant); two-sided p from t with ``n - 2 - k`` degrees of freedom."""
    from scipy.stats import rankdata, t

    cols = [x, y, *controls]
    rows = [r for r in zip(*cols) if all(v is not None and math.isfinite(v) for v in r)]
    k = len(controls)
    n = len(rows)
    if n < k + 4:
        return None
    data = np.array(rows, dtype=float)
    ranks = np.column_stack([rankdata(data[:, j]) for j in range(data.shape[1])])
    z = np.column_stack([np.ones(n), ranks[:, 2:]])
    res = [ranks[:, j] - z @ np.linalg.lstsq(z, ranks[:, j], rcond=None)[0] for j in (0, 1)]
    if min(np.std(r) for r in res) < 1e-12:
        return None
    r = float(np.corrcoef(res[0], res[1])[0, 1])
    df = n - 2 - k
    tstat = r * math.sqrt(df / max(1e-300, 1 - r * r))
    return r, float(2 * t.sf(abs(tstat), df)), n
