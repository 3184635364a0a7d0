"""NC metric formulas from class-mean and covariance statistics (float64, pure torch).

Notation (see DESIGN.md, "Definitions"): K classes, d feature dims,
``M`` = rows mu_k - mu_G (K, d), ``sigma_w`` the within-class covariance (d, d).
"""

from __future__ import annotations

import math

import torch

EPS64 = torch.finfo(torch.float64).eps


def nc1(sigma_w: torch.Tensor, M: torch.Tensor) -> float:
    """NC1 = 1/K tr(Sigma_W Sigma_B^+), with Sigma_B = M^T M / K, never forming a d x d inverse.

    Sigma_B has rank <= K-1. Its eigenpairs come from the thin SVD of the K x d matrix
    A = M / sqrt(K) = U S V^T (the same eigenvectors as the K x K Gram matrix M M^T / K
    gives, without squaring its condition number): Sigma_B = V S^2 V^T, so
    tr(Sigma_W Sigma_B^+) = sum_j v_j^T Sigma_W v_j / s_j^2.

    Tolerance: a direction j is kept when s_j > max(s) * max(K, d) * eps64, i.e. the
    eigenvalue lambda_j = s_j^2 > max(lambda) * (max(K, d) * eps64)^2 -- the
    ``numpy.linalg.matrix_rank`` / ``torch.linalg.pinv`` default cut-off applied to the
    singular values of A. Cost O(K^2 d + K d^2).

    Args:
        sigma_w: Within-class covariance (d, d), float64.
        M: Centred class means (K, d), float64.

    Returns:
        NC1 as a float (clamped at 0 against rounding of a PSD trace).
    """
    K, d = M.shape
    _, s, vh = torch.linalg.svd(M / math.sqrt(K), full_matrices=False)  # (r,), (r, d)
    if s.numel() == 0 or float(s.max()) == 0.0:
        return float("nan")
    keep = s > s.max() * max(K, d) * EPS64
    v, lam = vh[keep], s[keep] ** 2  # (r', d), (r',)
    quad = ((v @ sigma_w) * v).sum(dim=1)  # (r',) v_j^T Sigma_W v_j
    return max(float((quad / lam).sum()) / K, 0.0)


def nc2_etf(M: torch.Tensor) -> float:
    """|| G/||G||_F - (I_K - 11^T/K)/sqrt(K-1) ||_F with G = M M^T.

    Args:
        M: Centred class means (K, d), float64.

    Returns:
        Distance of the normalised Gram matrix to a simplex ETF's.
    """
    K = M.shape[0]
    G = M @ M.T  # (K, K)
    eye = torch.eye(K, dtype=M.dtype, device=M.device)
    etf = (eye - 1.0 / K) / math.sqrt(K - 1)  # (K, K), unit Frobenius norm
    return float(torch.linalg.norm(G / torch.linalg.norm(G) - etf))


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
    K = M.shape[0]
    Mn = M / torch.linalg.norm(M, dim=1, keepdim=True)  # (K, d)
    cos = Mn @ Mn.T  # (K, K)
    off = ~torch.eye(K, dtype=torch.bool, device=M.device)
    return float((cos[off] + 1.0 / (K - 1)).abs().mean())


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
    K = M.shape[0]
    # exact pairwise differences (no ||a||^2 + ||b||^2 - 2ab cancellation)
    dist2 = torch.cdist(M, M, compute_mode="donot_use_mm_for_euclid_dist") ** 2  # (K, K)
    i, j = torch.triu_indices(K, K, offset=1, device=M.device)
    return float(((spread[i] + spread[j]) / (2.0 * dist2[i, j])).mean())
