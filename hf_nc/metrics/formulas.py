"""NC metric formulas from class-mean and covariance statistics (float64, pure torch).

Notation (see DESIGN.md, "Definitions"): K classes, d feature dims, class counts n_k,
``M`` = rows mu_k - mu_G (K, d), ``sigma_w`` the within-class covariance (d, d).

The pairwise metrics (``nc2_etf``, ``nc2_equiangle``, ``cdnv``) work through K x K
matrices in row blocks of at most ``PAIRWISE_CHUNK`` entries, so their memory is
O(chunk) and not O(K^2) (ImageNet-21k's K = 21,841 would need 3.8 GB per K x K matrix).
"""

from __future__ import annotations

import math

import torch

EPS64 = torch.finfo(torch.float64).eps

#: entries of one (rows x K) block of the pairwise metrics (2^21 float64 = 16 MiB)
PAIRWISE_CHUNK = 1 << 21

#: Gram-based squared distances ``|a|^2 + |b|^2 - 2 a.b`` are rechecked exactly (as
#: ``|a - b|^2``) for pairs with ``|a - b|^2 <= CLOSE_PAIR * (|a|^2 + |b|^2)``. The rounding
#: error of the Gram form is at most about ``2 d eps (|a|^2 + |b|^2)``, so every pair kept
#: from the Gram form has a relative error below ``2 d eps / CLOSE_PAIR`` (2.8e-12 at
#: d = 1024), which float64 exactness needs; close pairs are rare for centred class means.
CLOSE_PAIR = 1.0 / 16


def drop_count_direction(M: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
    """M (K, d) in an orthonormal basis of the K-1 dims orthogonal to the class counts.

    The rows of M = mu_k - mu_G, weighted by the counts n_k, sum to zero (n^T M = 0), so M
    has rank <= K-1 and ``M^T M = (HM)^T (HM)`` for the Householder reflection H that maps
    n/|n| onto -e_1; the first row of HM is -n^T M/|n| = 0 up to rounding. Dropping it
    removes the spurious K-th direction that rounding leaves in M by construction (with an
    unrepresentative first batch it could pass any relative tolerance and inflate NC1 by
    10^26). Cost O(Kd).

    Args:
        M: Centred class means (K, d), float64.
        counts: Class counts (K,), all > 0; default: equal counts.

    Returns:
        (K-1, d) with the same Gram matrix ``M^T M`` (exactly so in exact arithmetic).
    """
    K = M.shape[0]
    n = torch.ones(K, dtype=M.dtype, device=M.device) if counts is None else counts.to(M)
    v = n / torch.linalg.norm(n)  # unit vector, v[0] > 0
    v[0] += 1.0  # H = I - 2 v v^T / v^T v maps n/|n| onto -e_1 (no cancellation: v[0] >= 1)
    HM = M - (2.0 / v.dot(v)) * torch.outer(v, v @ M)  # (K, d)
    return HM[1:]


#: from this min(K-1, d) on, CPU NC1 uses a pivoted-QR least-squares pseudo-inverse (LAPACK
#: gelsy, 2-3x faster than the SVD at K = 1000, d = 768) instead of the thin SVD
QR_FROM = 512


def _largest_singular_value(A: torch.Tensor, iters: int = 30) -> float:
    """||A||_2 by power iteration on A^T A (to within a few percent: it only scales a tolerance)."""
    v = torch.ones(A.shape[1], dtype=A.dtype, device=A.device) / A.shape[1] ** 0.5
    v = v + torch.linspace(0, 1e-3, A.shape[1], dtype=A.dtype, device=A.device)  # not orthogonal to it
    s = torch.zeros((), dtype=A.dtype, device=A.device)
    for _ in range(iters):
        w = A.T @ (A @ v)
        s = torch.linalg.norm(w)
        if float(s) == 0.0:
            return 0.0
        v = w / s
    return float(torch.linalg.norm(A @ v))


def nc1(
    sigma_w: torch.Tensor,
    M: torch.Tensor,
    counts: torch.Tensor | None = None,
    eps: float = EPS64,
    floor: float = 0.0,
) -> float:
    """NC1 = 1/K tr(Sigma_W Sigma_B^+), with Sigma_B = M^T M / K, never forming a d x d inverse.

    Sigma_B has rank <= K-1 (see :func:`drop_count_direction`, which is applied first, so at
    most K-1 directions are ever kept). With A = HM / sqrt(K) ((K-1) x d), Sigma_B = A^T A
    and Sigma_B^+ = A^+ A^+^T, so tr(Sigma_W Sigma_B^+) = tr(X^T Sigma_W X) with X = A^+.
    A^+ comes from the thin SVD A = U S V^T (X = V S^-1 U^T, so the sum is
    sum_j v_j^T Sigma_W v_j / s_j^2) or, on the CPU from min(K-1, d) >= ``QR_FROM``, from a
    least-squares solve with a rank-revealing pivoted QR (LAPACK gelsy, the same minimum-norm
    pseudo-inverse at the same tolerance). Neither squares the condition number.

    Tolerance: a direction j is kept when s_j > max(K, d) * eps * max(s_max, sqrt(tr Sigma_W)).
    The first term is the ``numpy.linalg.matrix_rank`` / ``torch.linalg.pinv`` default on the
    singular values of A. The second is the rounding floor of the class means: they are
    sums of within-class deviations of size about sqrt(tr Sigma_W), so a direction whose
    between-class spread is below eps times that is rounding noise, not signal (it would
    add ~1/eps^2 to NC1). It matters only when the means are genuinely rank-deficient.
    ``floor`` is the rounding floor of the *inputs* (``NCStats`` passes 2 eps of the
    features' dtype times their RMS norm): a direction whose spread is below
    the rounding of the features themselves is not signal either. It matters when K > d and
    the features lie in a hyperplane (a LayerNorm's output: its centred means span d - 1
    directions, and the d-th holds float32 rounding, ~1e-8 of the largest, far above the
    float64 tolerance; kept, it added its rounding ratio to NC1, 25% in a test, and made NC1
    depend on the batch size).
    Cost O(K^2 d + K d^2).

    Args:
        sigma_w: Within-class covariance (d, d), float64.
        M: Centred class means (K, d), float64.
        counts: Class counts (K,) (the weights with which M's rows sum to zero); default:
            equal counts.
        eps: Machine epsilon of the accumulation (float32 statistics are noisier).
        floor: Singular values of ``A`` (the centred means / sqrt(K)) at or below it are
            rounding of the input features and dropped.

    Returns:
        NC1 as a float (clamped at 0 against rounding of a PSD trace); NaN if M = 0.
    """
    K, d = M.shape
    A = drop_count_direction(M, counts) / math.sqrt(K)  # (K-1, d)
    within = float(torch.trace(sigma_w).clamp_min(0)) ** 0.5
    if min(K - 1, d) >= QR_FROM and A.device.type == "cpu":
        s_max = _largest_singular_value(A)
        if s_max == 0.0:
            return float("nan")
        rcond = max(max(K, d) * eps * max(1.0, within / s_max), floor / s_max)
        if K - 1 <= d:  # X = A^+ (d, K-1): the smaller right-hand side
            X = torch.linalg.lstsq(A, torch.eye(K - 1, dtype=A.dtype), rcond=rcond, driver="gelsy").solution
            total = ((sigma_w @ X) * X).sum()
        else:  # Z = (A^T)^+ = X^T (K-1, d)
            Z = torch.linalg.lstsq(A.T, torch.eye(d, dtype=A.dtype), rcond=rcond, driver="gelsy").solution
            total = ((Z @ sigma_w) * Z).sum()
        return max(float(total) / K, 0.0)
    _, s, vh = torch.linalg.svd(A, full_matrices=False)  # (r,), (r, d), r <= K-1
    if s.numel() == 0 or float(s.max()) == 0.0:
        return float("nan")
    tol = max(max(K, d) * eps * max(float(s.max()), within), floor)
    keep = s > tol
    v, lam = vh[keep], s[keep] ** 2  # (r', d), (r',)
    quad = ((v @ sigma_w) * v).sum(dim=1)  # (r',) v_j^T Sigma_W v_j
    return max(float((quad / lam).sum()) / K, 0.0)


def pairwise(
    M: torch.Tensor, spread: torch.Tensor, chunk: int = PAIRWISE_CHUNK
) -> dict[str, float]:
    """``nc2_etf``, ``nc2_equiangle`` and ``cdnv`` in row blocks (memory O(chunk), not O(K^2)).

    Each block G_b = M_b M^T (b, K) is one matrix product; distances come from it as
    ``|a|^2 + |b|^2 - 2 a.b`` with an exact recheck of close pairs (see ``CLOSE_PAIR``),
    14-22x faster than an exact ``cdist`` and as exact in float64.

    Args:
        M: Centred class means (K, d), float64.
        spread: s_k = mean over class k of ||h_i - mu_k||^2, (K,), float64.
        chunk: Entries per (b, K) block.

    Returns:
        ``{"nc2_etf", "nc2_equiangle", "cdnv"}`` (cdnv is inf if two class means coincide).
    """
    K, d = M.shape
    n2 = (M * M).sum(dim=1)  # (K,) |mu_k - mu_G|^2
    norms = n2.sqrt()
    b = max(1, min(K, chunk // K))
    starts = range(0, K, b)
    # ||G||_F from the smaller Gram matrix (same nonzero eigenvalues)
    if d < K:
        g = torch.linalg.norm(M.T @ M)
    else:
        g = torch.sqrt(sum(((M[i : i + b] @ M.T) ** 2).sum() for i in starts))
    off = -1.0 / (K * math.sqrt(K - 1))  # simplex ETF entries off / on the diagonal
    on = (1.0 - 1.0 / K) / math.sqrt(K - 1)
    res2 = torch.zeros((), dtype=M.dtype, device=M.device)
    ang = torch.zeros_like(res2)
    cd = torch.zeros_like(res2)
    cols = torch.arange(K, device=M.device)
    for i in starts:
        j = min(i + b, K)
        rows = torch.arange(i, j, device=M.device)
        diag = (rows - i, rows)  # positions of the diagonal in the block
        G = M[i:j] @ M.T  # (b, K)
        # nc2_etf: || G/||G|| - ETF ||_F^2
        R = G / g - off
        R[diag] -= on - off
        res2 += (R * R).sum()
        # nc2_equiangle: |cos + 1/(K-1)| over k != k'
        C = (G / (norms[i:j, None] * norms[None, :]) + 1.0 / (K - 1)).abs_()
        C[diag] = 0.0
        ang += C.sum()
        # cdnv over pairs k < k'
        D2 = n2[i:j, None] + n2[None, :] - 2.0 * G
        upper = cols[None, :] > rows[:, None]
        close = upper & (D2 <= CLOSE_PAIR * (n2[i:j, None] + n2[None, :]))
        pi, pj = torch.nonzero(close, as_tuple=True)
        step = max(1, chunk // max(d, 1))
        for p in range(0, pi.numel(), step):  # exact |a - b|^2 of the close pairs
            a, c = pi[p : p + step], pj[p : p + step]
            diff = M[i + a] - M[c]
            D2[a, c] = (diff * diff).sum(dim=1)
        val = (spread[i:j, None] + spread[None, :]) / (2.0 * D2)
        cd += torch.where(upper, val, torch.zeros((), dtype=val.dtype, device=val.device)).sum()
    return {
        "nc2_etf": float(res2.clamp_min(0).sqrt()),
        "nc2_equiangle": float(ang / (K * (K - 1))),
        "cdnv": float(cd / (K * (K - 1) / 2)),
    }


def nc2_etf(M: torch.Tensor) -> float:
    """|| G/||G||_F - (I_K - 11^T/K)/sqrt(K-1) ||_F with G = M M^T.

    Args:
        M: Centred class means (K, d), float64.

    Returns:
        Distance of the normalised Gram matrix to a simplex ETF's.
    """
    return pairwise(M, torch.zeros(M.shape[0], dtype=M.dtype, device=M.device))["nc2_etf"]


def nc2_equinorm(M: torch.Tensor) -> float:
    """Population std over mean of the class-mean norms ||mu_k - mu_G||.

    Args:
        M: Centred class means (K, d), float64.
    """
    norms = torch.linalg.norm(M, dim=1)  # (K,)
    return float(norms.std(correction=0) / norms.mean())


def nc2_equiangle(M: torch.Tensor) -> float:
    """Mean over k != k' of |cos(mu_k - mu_G, mu_k' - mu_G) + 1/(K-1)|.

    Args:
        M: Centred class means (K, d), float64.
    """
    return pairwise(M, torch.zeros(M.shape[0], dtype=M.dtype, device=M.device))["nc2_equiangle"]


def nc3(W: torch.Tensor, M: torch.Tensor) -> float:
    """|| W/||W||_F - M/||M||_F ||_F for a classifier weight W (K, d).

    Args:
        W: Classifier weight (K, d), float64.
        M: Centred class means (K, d), float64.
    """
    return float(torch.linalg.norm(W / torch.linalg.norm(W) - M / torch.linalg.norm(M)))


def cdnv(M: torch.Tensor, spread: torch.Tensor) -> float:
    """Mean over pairs k < k' of (s_k + s_k') / (2 ||mu_k - mu_k'||^2).

    Args:
        M: Centred class means (K, d), float64 (differences of rows equal mu_k - mu_k').
        spread: s_k = mean over class k of ||h_i - mu_k||^2, (K,), float64.

    Returns:
        The class-distance-normalised variance (inf if two class means coincide).
    """
    return pairwise(M, spread)["cdnv"]
