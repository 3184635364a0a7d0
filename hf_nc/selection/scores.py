"""Transferability scores of frozen features: LogME, NCTI, H-score (plain and shrinkage) and NC.

Every score is a function of a feature matrix ``features`` (N, d) -- what a frozen model
feeds its classifier (or a block's pooled output) on the downstream TRAINING data -- and
integer ``labels`` (N,) in ``[0, K)``. All arithmetic is float64 NumPy.

Sign convention: :data:`SCORES` maps a name to a :class:`ScoreSpec` whose ``direction`` is
``+1`` when a higher value predicts better transfer and ``-1`` when a lower one does (NC1,
CDNV, NC2). :func:`oriented` multiplies by it, so "higher is better" holds for every
oriented score and rankings never need to know which is which.

Streaming (``ScoreSpec.streamable``): a score is streamable when it is a function of
float64 sufficient statistics summed over batches and ranks -- class counts, class sums and
the d x d second moment, i.e. exactly what :class:`hf_nc.metrics.NCStats` holds -- so it
never needs the N x d features:

============  ===========  ==========================================================
score         streamable   from
============  ===========  ==========================================================
logme         yes          eigenvalues of F^T F, F^T Y (= class sums), N: :func:`logme_from_stats`
hscore        yes          total covariance, class means: :func:`hscore_from_stats`
nc1, cdnv,    yes          NCStats
nc2_etf
ncc_acc       two passes   NCStats + ``ncc_pass`` (the class means first)
hscore_shrink no           Ledoit-Wolf needs sum_i ||h_i - mu||^4 about the final mean
ncti          no           PCA, then per-sample LDA posteriors, then a pool of candidates
============  ===========  ==========================================================

References: LogME, You et al., ICML 2021 (and the fixed-point form of You et al., JMLR 2022,
arXiv 2110.10545); NCTI, Wang et al., ICCV 2023; H-score, Bao et al., ICIP 2019; shrinkage
H-score, Ibrahim et al., "Newer is not always better", ICLR 2022.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..metrics.validation import check_within_class

_EPS = np.finfo(np.float64).eps
_EPS32 = float(np.finfo(np.float32).eps)
LOGME_FORMS = ("evidence", "thin")


# ---------------------------------------------------------------------------------------- input
def _as_xy(features: Any, labels: Any, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """float64 (N, d) features, int64 (N,) labels and K, with clear errors."""
    if hasattr(features, "detach"):  # torch tensor
        features = features.detach().cpu().double().numpy()
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D (N, d) array, got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"labels must be a 1-D array of N = {len(x)} class indices, got shape {y.shape}")
    if len(x) == 0:
        raise ValueError("no samples")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or inf")
    if y.dtype.kind not in "biuf":  # strings, objects: np.mod would fail with an unrelated TypeError
        raise ValueError(f"labels must be integer class indices in [0, K), got dtype {y.dtype}: map class names to 0..K-1 first")
    if y.dtype.kind == "f" and not np.all(np.equal(np.mod(y, 1), 0)):
        raise ValueError("labels must be integer class indices")
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if y.min() < 0 or y.max() >= k:  # before the int64 cast, which would wrap huge float labels
        raise ValueError(f"labels outside [0, {k}): min {y.min():g}, max {y.max():g}")
    if k < 2:
        raise ValueError(f"need at least 2 classes, got {k}")
    return x, y.astype(np.int64), k


def _check_counts(counts: np.ndarray) -> None:
    """Every class has a sample, and some class has two.

    With one sample in every class the labels are a bijection onto the samples, and every score
    here is symmetric in the classes: it is then a function of the features alone, the same for
    any labelling (H-score is exactly min(K - 1, d)), so it would measure nothing about the task.
    """
    if np.any(counts == 0):
        raise ValueError(f"classes without samples: {np.flatnonzero(counts == 0).tolist()}")
    check_within_class(counts, "the score would not depend on the labels (within-class variability is 0 by construction)")


def _class_stats(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Class counts (K,) and class sums (K, d); every class must have a sample, some class two."""
    counts = np.bincount(y, minlength=k).astype(np.float64)
    _check_counts(counts)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, y, x)
    return counts, sums


def _stats_arrays(stats) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(counts (K,), class sums (K, d), F^T F (d, d), N)`` of raw (unshifted) features from an
    :class:`hf_nc.metrics.NCStats` (all-reduced: every rank holds the global sums)."""
    if stats.device is None or float(stats.counts.sum()) == 0:
        raise ValueError("the NCStats hold no samples")
    counts = stats.counts.double().cpu().numpy()
    _check_counts(counts)
    c = stats.shift.double().cpu().numpy()
    shifted = stats.sums.double().cpu().numpy()  # sum over class k of (h - c)
    second = stats.second.double().cpu().numpy()  # sum over i of (h - c)(h - c)^T
    n = float(counts.sum())
    total = shifted.sum(axis=0)
    sums = shifted + counts[:, None] * c[None, :]
    gram = second + np.outer(c, total) + np.outer(total, c) + n * np.outer(c, c)
    return counts, sums, (gram + gram.T) / 2, int(n)


# ---------------------------------------------------------------------------------------- LogME
def _logme_class(sigma: np.ndarray, x2: np.ndarray, res_x2: float, n: int, d: int, null_dims: int,
                 max_iter: int, tol: float, eps: float) -> float:
    """Evidence per sample of one target column, from the nonzero eigenvalues ``sigma`` of
    F^T F, the squared projections ``x2`` of the target on the matching left singular
    vectors, and the residual ``res_x2 = ||y||^2 - sum(x2)``.

    MacKay's fixed point (You et al.'s Algorithm): gamma = sum sigma / (sigma + alpha/beta),
    alpha = gamma / ||m||^2, beta = (N - gamma) / ||y - F m||^2 (``eps`` in the denominators),
    at most ``max_iter`` updates, stopping when alpha/beta moves by <= ``tol`` relatively;
    the evidence is taken at the last (alpha, beta) with the residuals of the step before,
    as thuml/LogME does, so the numbers match it.
    """
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        t = alpha / beta
        gamma = float((sigma / (sigma + t)).sum())
        m2 = float((sigma * x2 / (t + sigma) ** 2).sum())
        res2 = float((x2 / (1 + sigma / t) ** 2).sum()) + res_x2
        alpha = gamma / (m2 + eps)
        beta = (n - gamma) / (res2 + eps)
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"LogME undefined: the fixed point reached alpha = {alpha:.3g}, beta = {beta:.3g}")
        if abs(alpha / beta - t) / t <= tol:
            break
    evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - 0.5 * float(np.log(alpha + beta * sigma).sum())
                - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi))
    # The d - k zero eigenvalues of F^T F (k = rank <= N): each adds log(alpha + beta * 0) to
    # log|A|, A = alpha I + beta F^T F. The thin form drops them.
    evidence -= null_dims / 2 * math.log(alpha)
    return evidence / n


def _logme_spectrum(sigma, proj, ysq, n, d, form, max_iter, tol, eps) -> float:
    if form not in LOGME_FORMS:
        raise ValueError(f"form must be one of {LOGME_FORMS}, got {form!r}")
    k = len(sigma)
    if k == 0:
        raise ValueError("LogME undefined: the features are all zero")
    null_dims = d - k if form == "evidence" else 0
    x2 = proj**2  # (k, K)
    evidences = [_logme_class(sigma, x2[:, j], float(ysq[j] - x2[:, j].sum()), n, d, null_dims, max_iter, tol, eps)
                 for j in range(x2.shape[1])]
    return float(np.mean(evidences))


def _gram_spectrum(gram: np.ndarray, fty: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nonzero eigenvalues of F^T F and the projections U^T Y = S^-1/2 V^T F^T Y."""
    s, v = np.linalg.eigh(gram)
    keep = s > max(s.max(), 0.0) * max(n, gram.shape[0]) * _EPS  # numerically zero: the null space
    s, v = s[keep], v[:, keep]
    return s, (v.T @ fty) / np.sqrt(s)[:, None]


def logme(features: Any, labels: Any, *, num_classes: int | None = None, form: str = "evidence",
          max_iter: int = 11, tol: float = 1e-3, eps: float = 1e-5) -> float:
    """LogME (You et al., ICML 2021): mean over classes of the maximised log evidence per sample
    of a Bayesian linear regression from the features to the one-vs-rest target of the class.

    Higher is better. Features are used as given (no centring, no bias column), as in
    thuml/LogME; the iteration (``max_iter`` 11, ``tol`` 1e-3 on alpha/beta, ``eps`` 1e-5)
    is thuml/LogME's ``LogME().fit`` (the fixed-point form), so with ``N > d`` and features of
    full column rank both forms equal ``LogME().fit`` to rounding.

    ``form`` matters only when F has rank k < d, i.e. always in few-shot (N < d):

    - ``"evidence"`` (default): the exact log marginal likelihood of the model LogME defines
      (prior N(0, alpha^-1 I_d)), whose ``log|alpha I + beta F^T F|`` counts the d - k zero
      eigenvalues of F^T F as ``log alpha`` each -- the ICML paper's form. We default to it
      because it is the quantity the method is derived from, it is a function of F^T F and
      F^T Y alone (streamable, :func:`logme_from_stats`), and it does not change with d when
      features gain directions the data never spans.
    - ``"thin"``: thuml/LogME's default ``fit`` via a thin SVD, which drops those d - k terms
      but keeps the ``d/2 log alpha`` prior term, so it adds ``(d - k)/(2N) log alpha`` per
      class: with N < d that term grows with the feature width d of the candidate.

    Args:
        features: (N, d) float array or tensor.
        labels: (N,) integer labels in ``[0, K)``.
        num_classes: K; default ``max(labels) + 1``. Every class needs a sample.
        form: ``"evidence"`` or ``"thin"`` (see above).
        max_iter, tol, eps: The fixed point's settings (thuml/LogME's by default).

    Returns:
        The LogME score (a float; per-sample log evidence, averaged over the K classes).
    """
    x, y, k = _as_xy(features, labels, num_classes)
    counts, _ = _class_stats(x, y, k)
    n, d = x.shape
    onehot = np.eye(k)[y]
    if n >= d:
        sigma, proj = _gram_spectrum(x.T @ x, x.T @ onehot, n)
    else:
        u, sv, _ = np.linalg.svd(x, full_matrices=False)
        keep = sv > sv.max() * max(n, d) * _EPS
        sigma, proj = sv[keep] ** 2, u[:, keep].T @ onehot
    return _logme_spectrum(sigma, proj, counts, n, d, form, max_iter, tol, eps)


def logme_from_stats(stats, *, form: str = "evidence", max_iter: int = 11, tol: float = 1e-3, eps: float = 1e-5) -> float:
    """:func:`logme` from an all-reduced :class:`hf_nc.metrics.NCStats` (streamed, any N):
    F^T F and F^T Y (the class sums) are recovered exactly from its shifted moments."""
    counts, sums, gram, n = _stats_arrays(stats)
    sigma, proj = _gram_spectrum(gram, sums.T, n)
    return _logme_spectrum(sigma, proj, counts, n, gram.shape[0], form, max_iter, tol, eps)


# ---------------------------------------------------------------------------------------- H-score
def _pinv_psd(a: np.ndarray, rcond: float | None) -> np.ndarray:
    s, v = np.linalg.eigh((a + a.T) / 2)
    cut = (max(a.shape) * _EPS if rcond is None else rcond) * max(s.max(), 0.0)
    inv = np.where(s > cut, 1.0 / np.where(s > cut, s, 1.0), 0.0)
    return (v * inv) @ v.T


def _hscore(cov_f: np.ndarray, cov_g: np.ndarray, rcond: float | None) -> float:
    return float(np.trace(_pinv_psd(cov_f, rcond) @ cov_g))


def _between(counts: np.ndarray, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global mean and cov(E[f|y]) = sum_k n_k/N (mu_k - mu)(mu_k - mu)^T."""
    n = counts.sum()
    mu = sums.sum(axis=0) / n
    dm = sums / counts[:, None] - mu
    return mu, (dm.T * (counts / n)) @ dm


def hscore(features: Any, labels: Any, *, num_classes: int | None = None, rcond: float | None = None) -> float:
    """H-score (Bao et al., ICIP 2019): ``tr(cov(f)^+ cov(E[f | y]))``, higher is better.

    ``cov(f)`` is the total covariance of the features, ``cov(E[f|y])`` the covariance of each
    sample's class mean (sum_k n_k/N (mu_k - mu)(mu_k - mu)^T); both with 1/N (the common
    1/(N-1) of the original code cancels). The pseudo-inverse drops eigenvalues at most
    ``rcond`` times the largest (default ``max(N, d) * machine eps``, NumPy's rank rule).
    With N < d, cov(f) is singular and the score is dominated by its smallest kept
    eigenvalues: prefer :func:`hscore_shrinkage` in few-shot.
    """
    x, y, k = _as_xy(features, labels, num_classes)
    counts, sums = _class_stats(x, y, k)
    xc = x - x.mean(axis=0)
    _, cov_g = _between(counts, sums)
    return _hscore(xc.T @ xc / len(x), cov_g, rcond)


def hscore_from_stats(stats, *, rcond: float | None = None) -> float:
    """:func:`hscore` from an all-reduced :class:`hf_nc.metrics.NCStats` (streamed)."""
    counts, sums, gram, n = _stats_arrays(stats)
    mu, cov_g = _between(counts, sums)
    return _hscore(gram / n - np.outer(mu, mu), cov_g, rcond)


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf (2004) shrunk covariance of the rows of ``x`` and its shrinkage ``alpha``:
    ``(1 - alpha) S + alpha tr(S)/d I`` with S the 1/N empirical covariance and
    ``alpha = min(b^2, d^2) / d^2`` for ``d^2 = ||S - mu I||_F^2 / d`` and
    ``b^2 = (sum_i ||x_i x_i^T - S||_F^2 / N^2) / d`` (centred rows)."""
    xc = x - x.mean(axis=0)
    n, d = xc.shape
    s = xc.T @ xc / n
    mu = np.trace(s) / d
    delta2 = (np.sum(s**2) - 2 * mu * np.trace(s) + d * mu**2) / d  # ||S - mu I||_F^2 / d
    # sum_i ||x_i x_i^T - S||_F^2 = sum_i ||x_i||^4 - N ||S||_F^2
    beta2 = (np.sum(np.sum(xc**2, axis=1) ** 2) / n - np.sum(s**2)) / (n * d)
    alpha = 0.0 if delta2 == 0 else float(min(beta2, delta2) / delta2)
    shrunk = (1 - alpha) * s
    shrunk.flat[:: d + 1] += alpha * mu
    return shrunk, alpha


def hscore_shrinkage(features: Any, labels: Any, *, num_classes: int | None = None) -> float:
    """Shrinkage H-score (Ibrahim et al., ICLR 2022): ``tr(cov_a(f)^-1 (1 - a) cov(E[f|y]))``
    with ``cov_a`` the Ledoit-Wolf shrunk covariance and ``a`` its shrinkage; higher is better.

    Well-conditioned in few-shot (N < d), where the plain H-score is not. Both covariances use
    1/N (the Ledoit-Wolf convention); code that takes cov(E[f|y]) with 1/(N-1) differs by the
    constant N/(N-1), which does not change a ranking of candidates on the same data.
    """
    x, y, k = _as_xy(features, labels, num_classes)
    counts, sums = _class_stats(x, y, k)
    cov_a, a = ledoit_wolf(x)
    _, cov_g = _between(counts, sums)
    return float(np.trace(np.linalg.solve(cov_a, (1 - a) * cov_g))) if a > 0 else _hscore(cov_a, cov_g, None)


# ---------------------------------------------------------------------------------------- NCTI
@dataclass(frozen=True)
class NCTITerms:
    """NCTI's three raw terms of one candidate (Wang et al., ICCV 2023).

    ``seli``: nuclear norm of the centred LDA projection (higher: closer to the simplex
    geometry); ``ncc``: mean posterior of the true class under the (shrunk) LDA, i.e. a
    Mahalanobis nearest-class-centre classifier (higher is better); ``vc``: log of the sum over
    classes of the nuclear norm of that class's posterior matrix (within-class variability;
    lower is better). ``shrinkage`` is the LDA shrinkage used (0: none).
    """

    seli: float
    ncc: float
    vc: float
    shrinkage: float = 0.0
    pca_dim: int = 0


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def ncti_terms(features: Any, labels: Any, *, num_classes: int | None = None, pca_dim: int = 64,
               shrinkage_dims: int = 32, min_shrinkage: float = 1e-10) -> NCTITerms:
    """NCTI's raw terms for one candidate; combine a pool of them with :func:`ncti_composite`.

    Steps (the authors' protocol, written from the paper and their released scoring code):

    1. PCA to ``p = min(pca_dim, d, N - K, rank)`` dimensions (centred; variances with 1/(N-1)); the
       cap N - K keeps the within-class covariance invertible (the authors' SVD solver cuts
       its rank instead; both agree whenever N - K >= pca_dim), and ``rank`` (singular values
       above float32 rounding, relative) drops directions the features do not span. The
       authors' pipeline keeps such a direction and its SVD solver standardises the rounding
       noise in it to unit variance; on LayerNorm outputs (centred rows span d - 1
       directions) it therefore differs from ours, by design.
    2. LDA shrinkage ``lam = exp(-sum of the top shrinkage_dims PCA variances)``; at or below
       ``min_shrinkage`` no shrinkage is used (the authors switch to the unshrunk SVD solver).
       Within-class covariance ``Sw = (1-lam) sum_k pi_k C_k + lam tr(.)/p I`` (C_k the 1/n_k
       class covariance, pi_k = n_k/N), total ``St`` likewise, ``Sb = St - Sw``.
    3. ``seli`` = nuclear norm of the centred projection on the top K-1 generalised
       eigenvectors of (Sb, Sw), normalised to W^T Sw W = I.
    4. posteriors ``P = softmax(x^T Sw^-1 mu_k - mu_k^T Sw^-1 mu_k / 2 + log pi_k)``;
       ``ncc`` = mean of P[i, y_i]; ``vc`` = log sum_k ||P[y == k]||_*.

    Not streamable (PCA first, then a per-sample pass; the composite needs every candidate).

    Args:
        features: (N, d); labels: (N,) in ``[0, K)``.
        num_classes: K; default ``max(labels) + 1``. Every class needs 2 samples.
        pca_dim, shrinkage_dims, min_shrinkage: The protocol's constants (64, 32, 1e-10).
    """
    x, y, k = _as_xy(features, labels, num_classes)
    n, d = x.shape
    counts, _ = _class_stats(x, y, k)
    xc = x - x.mean(axis=0)
    _, sv, vt = np.linalg.svd(xc, full_matrices=False)
    # Numerical rank at float32 precision (model features are float32): e.g. LayerNorm outputs,
    # whose centred rows span d - 1 directions, carry one direction of pure rounding noise,
    # which the LDA would otherwise whiten into a full-size direction.
    rank = int(np.sum(sv > sv.max() * max(n, d) * _EPS32)) if sv.size and sv.max() > 0 else 0
    p = min(pca_dim, d, n - k, rank)  # never PCA directions the features do not span
    if p < k - 1:
        raise ValueError(f"NCTI needs min(pca_dim, d, N - K, rank) >= K - 1, got {p} < {k - 1}: too few samples or dimensions")
    z = xc @ vt[:p].T  # PCA scores (N, p); signs do not matter below
    var = sv[:p] ** 2 / (n - 1)
    lam = max(math.exp(-float(var[:shrinkage_dims].sum())), min_shrinkage)
    lam = 0.0 if lam <= min_shrinkage else lam

    priors = counts / n
    means = np.zeros((k, p))
    np.add.at(means, y, z)
    means /= counts[:, None]
    r = z - means[y]
    sw = r.T @ r / n  # = sum_k pi_k C_k
    st = z.T @ z / n  # z is centred
    eye = np.eye(p)
    sw_l = (1 - lam) * sw + lam * np.trace(sw) / p * eye
    st_l = (1 - lam) * st + lam * np.trace(st) / p * eye
    sb_l = st_l - sw_l
    # generalised eigenproblem Sb w = l Sw w via Sw^-1/2 (Sw symmetric positive definite)
    ws, wv = np.linalg.eigh(sw_l)
    if ws.min() <= ws.max() * p * _EPS:
        raise ValueError("the within-class covariance is singular after PCA (fewer samples than dimensions per class?)")
    isq = (wv / np.sqrt(ws)) @ wv.T
    ev, evec = np.linalg.eigh(isq @ sb_l @ isq)
    w = isq @ evec[:, np.argsort(ev)[::-1][: k - 1]]
    proj = z @ w
    seli = float(np.linalg.norm(proj - proj.mean(axis=0), ord="nuc"))

    sw_inv_mu = np.linalg.solve(sw_l, means.T)  # (p, K)
    logits = z @ sw_inv_mu - 0.5 * np.sum(means * sw_inv_mu.T, axis=1) + np.log(priors)
    post = _softmax(logits)
    ncc = float(post[np.arange(n), y].mean())
    vc = float(np.log(sum(np.linalg.norm(post[y == c], ord="nuc") for c in range(k))))
    return NCTITerms(seli=seli, ncc=ncc, vc=vc, shrinkage=lam, pca_dim=p)


def ncti_composite(terms: Sequence[NCTITerms]) -> list[float]:
    """NCTI scores of a pool of candidates: ``ncc' + seli' - vc'`` with each term min-max
    normalised over the pool (x' = (x - min) / (max - min)); higher is better.

    A term that is equal for every candidate carries no ranking information and contributes
    0 (the authors' code would divide by zero). A pool of one candidate scores 0.
    """
    terms = list(terms)
    if not terms:
        return []

    def norm(vals):
        v = np.asarray(vals, dtype=np.float64)
        span = v.max() - v.min()
        return np.zeros_like(v) if span == 0 else (v - v.min()) / span

    out = norm([t.ncc for t in terms]) + norm([t.seli for t in terms]) - norm([t.vc for t in terms])
    return [float(v) for v in out]


def ncti(pool: Sequence[tuple[Any, Any]] | Mapping[str, tuple[Any, Any]], **kwargs) -> list[float] | dict[str, float]:
    """NCTI of a pool of candidates, each ``(features, labels)`` on the same data:
    :func:`ncti_terms` per candidate, then :func:`ncti_composite`. A mapping in, a mapping out."""
    if isinstance(pool, Mapping):
        names = list(pool)
        return dict(zip(names, ncti_composite([ncti_terms(*pool[n], **kwargs) for n in names])))
    return ncti_composite([ncti_terms(f, y, **kwargs) for f, y in pool])


# ---------------------------------------------------------------------------------------- NC family
def _nc(key: str):
    def score(features: Any, labels: Any, *, num_classes: int | None = None) -> float:
        from ..metrics import nc_metrics

        x, y, k = _as_xy(features, labels, num_classes)
        return float(nc_metrics(x, y, num_classes=k)[key])

    score.__name__ = key
    score.__doc__ = f"``{key}`` of :func:`hf_nc.metrics.nc_metrics` (DESIGN.md's definition)."
    return score


nc1 = _nc("nc1")
cdnv = _nc("cdnv")
ncc_acc = _nc("ncc_acc")
nc2_etf = _nc("nc2_etf")


# ---------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ScoreSpec:
    """A registered score: ``fn(features, labels, num_classes=K) -> float`` (for ``pool``
    scores: :func:`ncti_terms`, combined over candidates by :func:`ncti_composite`),
    ``direction`` (+1: higher predicts better transfer, -1: lower does), ``streamable``
    (computable from summed sufficient statistics; see the module docstring)."""

    name: str
    fn: Callable[..., Any]
    direction: int
    streamable: bool
    pool: bool = False
    description: str = ""


SCORES: dict[str, ScoreSpec] = {s.name: s for s in (
    ScoreSpec("logme", logme, +1, True, description="LogME evidence (exact form), You et al. 2021"),
    ScoreSpec("logme_thin", lambda f, y, **kw: logme(f, y, form="thin", **kw), +1, True,
              description="LogME, thuml/LogME's thin-SVD form"),
    ScoreSpec("ncti", ncti_terms, +1, False, pool=True, description="NCTI composite over the pool, Wang et al. 2023"),
    ScoreSpec("hscore", hscore, +1, True, description="H-score, Bao et al. 2019"),
    ScoreSpec("hscore_shrinkage", hscore_shrinkage, +1, False, description="Ledoit-Wolf shrinkage H-score, Ibrahim et al. 2022"),
    ScoreSpec("nc1", nc1, -1, True, description="NC1 = tr(Sw Sb^+)/K, lower = more collapsed"),
    ScoreSpec("cdnv", cdnv, -1, True, description="class-distance-normalised variance"),
    ScoreSpec("ncc_acc", ncc_acc, +1, False, description="nearest-class-centre accuracy (two passes)"),
    ScoreSpec("nc2_etf", nc2_etf, -1, True, description="distance of the class-mean Gram to a simplex ETF"),
)}


def get_score(name: str) -> ScoreSpec:
    if name not in SCORES:
        raise ValueError(f"unknown score {name!r}; available: {sorted(SCORES)}")
    return SCORES[name]


def oriented(name: str, value: float) -> float:
    """``direction * value`` (higher is better); NaN or +-inf stay non-finite as -inf's worst."""
    v = float(value)
    return get_score(name).direction * v if math.isfinite(v) else -math.inf


def compute_scores(features: Any, labels: Any, names: Sequence[str], *, num_classes: int | None = None) -> dict[str, Any]:
    """Every named score of one candidate's features: floats, and :class:`NCTITerms` for
    ``"ncti"`` (combine over candidates with :func:`ncti_composite`). A score that cannot be
    computed on these features (e.g. NCTI with too few samples) is NaN, with the reason in
    ``out["errors"][name]``."""
    x, y, k = _as_xy(features, labels, num_classes)
    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name in names:
        spec = get_score(name)
        try:
            out[name] = spec.fn(x, y, num_classes=k)
        except (ValueError, ZeroDivisionError, np.linalg.LinAlgError, FloatingPointError) as exc:
            out[name] = float("nan")
            errors[name] = str(exc)
    if errors:
        out["errors"] = errors
    return out
