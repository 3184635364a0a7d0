"""Dense float64 NumPy reference of DESIGN.md's NC definitions, independent of hf_nc.

Used by the metrics tests (``test_metrics*.py``): direct per-class formulas on all the
features at once, Sigma_B^+ by ``np.linalg.pinv`` with a relative ``rcond``.
"""

import numpy as np


def reference_nc(h, y, K, W=None, rcond=1e-10):
    """All NC metrics of (h, y) by their definitions (float64, O(N K d) memory)."""
    h = np.asarray(h, dtype=np.float64)
    y = np.asarray(y)
    N, d = h.shape
    mus = np.stack([h[y == k].mean(axis=0) for k in range(K)])  # (K, d)
    mu_g = h.mean(axis=0)
    M = mus - mu_g
    sw = np.zeros((d, d))
    for k in range(K):
        c = h[y == k] - mus[k]
        sw += c.T @ c
    sw /= N
    sb = M.T @ M / K
    out = {"nc1": np.trace(sw @ np.linalg.pinv(sb, rcond=rcond, hermitian=True)) / K}
    G = M @ M.T
    etf = (np.eye(K) - np.ones((K, K)) / K) / np.sqrt(K - 1)
    out["nc2_etf"] = np.linalg.norm(G / np.linalg.norm(G) - etf)
    norms = np.linalg.norm(M, axis=1)
    out["nc2_equinorm"] = norms.std() / norms.mean()
    cos = M @ M.T / np.outer(norms, norms)
    off = ~np.eye(K, dtype=bool)
    out["nc2_equiangle"] = float(np.abs(cos[off] + 1 / (K - 1)).mean())
    if W is not None:
        W = np.asarray(W, dtype=np.float64)
        out["nc3"] = np.linalg.norm(W / np.linalg.norm(W) - M / np.linalg.norm(M))
    dist = ((h[:, None, :] - mus[None, :, :]) ** 2).sum(-1)  # (N, K)
    out["ncc_acc"] = float((dist.argmin(axis=1) == y).mean())
    s = np.array([((h[y == k] - mus[k]) ** 2).sum(axis=1).mean() for k in range(K)])
    i, j = np.triu_indices(K, 1)
    d2 = ((mus[i] - mus[j]) ** 2).sum(axis=1)  # exact differences
    out["cdnv"] = float(np.mean((s[i] + s[j]) / (2 * d2)))
    out["num_samples"] = N
    out["num_classes"] = K
    return {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in out.items()}


def make_data(K, d, counts, seed=0, spread=3.0, offset=0.0, noise=1.0):
    """Gaussian classes with the given per-class counts, shuffled; returns (h, y) float64/int64."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, d)) * spread
    y = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    rng.shuffle(y)
    h = means[y] + rng.normal(size=(len(y), d)) * rng.uniform(0.5, 2.0, size=d) * noise + offset
    return h, y.astype(np.int64)
