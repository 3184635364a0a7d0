"""Transferability scores against independent references (dense formulas, scikit-learn), N < d and N > d."""

import math

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from hf_nc.metrics import NCStats, nc_metrics
from hf_nc.selection import scores as S

SHAPES = [(240, 40, 5), (60, 100, 4), (100, 192, 10)]  # N > d, N < d (few-shot), 10 shots x 10 classes at d = 192


def make(n, d, k, seed=0, scale=1.0, offset=0.0):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    x = rng.normal(size=(n, d)) + np.eye(k)[y] @ rng.normal(size=(k, d)) * 0.7
    return x * scale + offset, y


# ---------------------------------------------------------------------------------------- LogME
def logme_reference(f, y, form="evidence", max_iter=11, tol=1e-3, eps=1e-5):
    """You et al.'s evidence, written densely: A = alpha I + beta F^T F, m = beta A^-1 F^T y,
    gamma = sum beta s_i / (alpha + beta s_i); the same stopping rule as thuml/LogME.
    ``thin`` leaves the d - rank zero eigenvalues of F^T F out of log|A|."""
    n, d = f.shape
    ftf = f.T @ f
    s = np.linalg.eigvalsh(ftf)
    rank = np.linalg.matrix_rank(f)
    out = []
    for c in range(y.max() + 1):
        t = (y == c).astype(float)
        alpha = beta = 1.0
        for _ in range(max_iter):
            a = alpha * np.eye(d) + beta * ftf
            m = beta * np.linalg.solve(a, f.T @ t)
            gamma = np.sum(beta * np.clip(s, 0, None) / (alpha + beta * np.clip(s, 0, None)))
            m2, res2 = m @ m, np.sum((t - f @ m) ** 2)
            old = alpha / beta
            alpha, beta = gamma / (m2 + eps), (n - gamma) / (res2 + eps)
            if abs(alpha / beta - old) / old <= tol:
                break
        logdet = np.linalg.slogdet(alpha * np.eye(d) + beta * ftf)[1]
        if form == "thin":
            logdet -= (d - rank) * np.log(alpha)
        ev = d / 2 * np.log(alpha) + n / 2 * np.log(beta) - logdet / 2 - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi)
        out.append(ev / n)
    return float(np.mean(out))


@pytest.mark.parametrize("n,d,k", SHAPES)
@pytest.mark.parametrize("form", S.LOGME_FORMS)
def test_logme_equals_dense_reference(n, d, k, form):
    x, y = make(n, d, k)
    assert S.logme(x, y, form=form) == pytest.approx(logme_reference(x, y, form), rel=1e-9, abs=1e-9)


def test_logme_forms_agree_above_d_and_differ_by_the_null_space_below():
    x, y = make(240, 40, 5)
    assert S.logme(x, y) == pytest.approx(S.logme(x, y, form="thin"), rel=1e-12)
    x, y = make(60, 100, 4)
    # thin = evidence + (d - N)/(2N) * mean_k log(alpha_k) > evidence here (alpha > 1): the width bonus
    assert S.logme(x, y, form="thin") > S.logme(x, y) + 0.5


def test_logme_converged_fixed_point_maximises_the_evidence():
    """At the converged fixed point the evidence is a maximum over (alpha, beta): an
    independent check of the update equations, not of the code's iteration."""
    x, y = make(60, 100, 4, seed=3)
    n, d = x.shape
    t = (y == 0).astype(float)
    ftf = x.T @ x

    def evidence(alpha, beta):
        a = alpha * np.eye(d) + beta * ftf
        m = beta * np.linalg.solve(a, x.T @ t)
        return (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - np.linalg.slogdet(a)[1] / 2
                - beta / 2 * np.sum((t - x @ m) ** 2) - alpha / 2 * m @ m - n / 2 * np.log(2 * np.pi)) / n

    sigma, proj = S._gram_spectrum(ftf, x.T @ t[:, None], n)
    # run the fixed point to convergence and read alpha, beta back through a 1-class evidence
    best = S._logme_class(sigma, proj[:, 0] ** 2, float(t @ t - (proj[:, 0] ** 2).sum()), n, d, d - len(sigma), 500, 1e-12, 0.0)
    grid = [evidence(a, b) for a in np.geomspace(1e-2, 1e3, 25) for b in np.geomspace(1e-2, 1e3, 25)]
    assert best >= max(grid) - 1e-9


@pytest.mark.parametrize("n,d,k", SHAPES)
@pytest.mark.parametrize("form", S.LOGME_FORMS)
def test_logme_streams_from_ncstats(n, d, k, form):
    x, y = make(n, d, k, offset=5.0)  # a common offset: the stats' shift must be undone exactly
    stats = NCStats(k, d)
    for i in range(0, n, 17):  # uneven batches
        stats.update(torch.from_numpy(x[i:i + 17]), torch.from_numpy(y[i:i + 17]))
    assert S.logme_from_stats(stats, form=form) == pytest.approx(S.logme(x, y, form=form), rel=1e-7)


# ---------------------------------------------------------------------------------------- H-score
def class_mean_rows(x, y):
    g = np.zeros_like(x)
    for c in np.unique(y):
        g[y == c] = x[y == c].mean(axis=0)
    return g


@pytest.mark.parametrize("n,d,k", SHAPES)
def test_hscore_equals_bao_formula(n, d, k):
    x, y = make(n, d, k)
    rcond = max(n, d) * np.finfo(float).eps
    ref = np.trace(np.linalg.pinv(np.cov(x.T, bias=True), rcond=rcond, hermitian=True) @ np.cov(class_mean_rows(x, y).T, bias=True))
    assert S.hscore(x, y) == pytest.approx(ref, rel=1e-6)
    stats = NCStats(k, d).update(torch.from_numpy(x + 3.0), torch.from_numpy(y))
    if n > d:  # streamed: exact when cov(f) is well conditioned
        assert S.hscore_from_stats(stats) == pytest.approx(S.hscore(x + 3.0, y), rel=1e-7)


@pytest.mark.parametrize("n,d,k", SHAPES)
def test_hscore_shrinkage_equals_ledoit_wolf_reference(n, d, k):
    x, y = make(n, d, k)
    lw = LedoitWolf().fit(x)
    ref = np.trace(np.linalg.inv(lw.covariance_) @ ((1 - lw.shrinkage_) * np.cov(class_mean_rows(x, y).T, bias=True)))
    assert S.hscore_shrinkage(x, y) == pytest.approx(ref, rel=1e-8)
    cov, a = S.ledoit_wolf(x)
    assert a == pytest.approx(lw.shrinkage_, rel=1e-10) and np.allclose(cov, lw.covariance_, atol=1e-12)


# ---------------------------------------------------------------------------------------- NCTI
def ncti_reference(x, y):
    """The published protocol with scikit-learn's PCA and LDA (SVD solver when the shrinkage
    hits its floor, else the eigen solver with that shrinkage)."""
    pca = PCA(n_components=64)
    z = pca.fit_transform(x)
    lam = max(np.exp(-pca.explained_variance_[:32].sum()), 1e-10)
    lda = LinearDiscriminantAnalysis(solver="svd") if lam == 1e-10 else LinearDiscriminantAnalysis(solver="eigen", shrinkage=float(lam))
    low = lda.fit_transform(z, y)
    seli = np.linalg.norm(low - low.mean(axis=0), ord="nuc")
    p = lda.predict_proba(z)
    ncc = p[np.arange(len(y)), y].mean()
    vc = np.log(sum(np.linalg.norm(p[y == c], ord="nuc") for c in range(y.max() + 1)))
    return seli, ncc, vc, (0.0 if lam == 1e-10 else lam)


@pytest.mark.parametrize("n,d,k,scale", [(300, 100, 5, 1.0), (300, 100, 5, 0.05), (200, 300, 10, 1.0), (200, 300, 10, 0.03), (150, 80, 2, 0.05)])
def test_ncti_terms_equal_the_published_protocol(n, d, k, scale):
    x, y = make(n, d, k, scale=scale)
    t = S.ncti_terms(x, y)
    seli, ncc, vc, lam = ncti_reference(x, y)
    assert t.shrinkage == pytest.approx(lam, rel=1e-10)
    assert (t.seli, t.ncc, t.vc) == pytest.approx((seli, ncc, vc), rel=1e-8)


def test_ncti_drops_float32_rounding_directions():
    """LayerNorm-like float32 features (each row centred across dims: the data span d - 1
    directions plus rounding): NCTI equals NCTI on the exact (d - 1)-dim coordinates."""
    x, y = make(100, 64, 10, seed=4)
    x = x - x.mean(axis=1, keepdims=True)
    x32 = x.astype(np.float32).astype(np.float64)
    basis = np.linalg.svd(np.eye(64) - 1 / 64, full_matrices=False)[0][:, :63]  # orthonormal basis of the hyperplane
    t, ref = S.ncti_terms(x32, y), S.ncti_terms(x32 @ basis, y)
    assert t.pca_dim == 63
    assert (t.seli, t.ncc, t.vc) == pytest.approx((ref.seli, ref.ncc, ref.vc), rel=1e-5)


def test_ncti_composite_is_min_max_normalised_sum():
    terms = [S.NCTITerms(seli=1.0, ncc=0.5, vc=2.0), S.NCTITerms(seli=3.0, ncc=0.9, vc=1.0), S.NCTITerms(seli=2.0, ncc=0.7, vc=4.0)]
    # ncc' = [0, 1, .5], seli' = [0, 1, .5], vc' = [1/3, 0, 1]
    assert S.ncti_composite(terms) == pytest.approx([-1 / 3, 2.0, 0.0])
    same = [S.NCTITerms(seli=1.0, ncc=0.5, vc=2.0)] * 2
    assert S.ncti_composite(same) == [0.0, 0.0] and S.ncti_composite([]) == []
    pool = {"a": make(200, 80, 4, seed=1), "b": make(200, 80, 4, seed=2)}
    assert S.ncti(pool) == dict(zip(pool, S.ncti_composite([S.ncti_terms(*pool["a"]), S.ncti_terms(*pool["b"])])))
    with pytest.raises(ValueError, match="too few"):
        S.ncti_terms(*make(6, 80, 4))


# ---------------------------------------------------------------------------------------- NC family, registry
def test_nc_scores_equal_nc_metrics_and_numpy_nc1():
    x, y = make(120, 20, 4)
    ref = nc_metrics(torch.from_numpy(x), torch.from_numpy(y))
    for name in ("nc1", "cdnv", "ncc_acc", "nc2_etf"):
        assert S.SCORES[name].fn(x, y) == pytest.approx(ref[name], rel=1e-12)
    mu = x.mean(axis=0)
    means = np.stack([x[y == c].mean(axis=0) for c in range(4)])
    sw = sum((x[y == c] - means[c]).T @ (x[y == c] - means[c]) for c in range(4)) / len(x)
    sb = (means - mu).T @ (means - mu) / 4
    assert S.nc1(x, y) == pytest.approx(np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10, hermitian=True)) / 4, rel=1e-8)


def test_registry_directions_and_streaming_flags():
    assert {n: s.direction for n, s in S.SCORES.items()} == {
        "logme": 1, "logme_thin": 1, "ncti": 1, "hscore": 1, "hscore_shrinkage": 1, "nc1": -1, "cdnv": -1, "ncc_acc": 1, "nc2_etf": -1}
    assert {n for n, s in S.SCORES.items() if s.streamable} == {"logme", "logme_thin", "hscore", "nc1", "cdnv", "nc2_etf"}
    assert [n for n, s in S.SCORES.items() if s.pool] == ["ncti"]
    assert S.oriented("nc1", 2.0) == -2.0 and S.oriented("logme", 2.0) == 2.0 and S.oriented("logme", math.nan) == -math.inf
    with pytest.raises(ValueError, match="unknown score"):
        S.get_score("leep")
    # a collapsed candidate beats a random one on every oriented score
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    collapsed = np.eye(4)[y] @ rng.normal(size=(4, 16)) * 3 + 0.05 * rng.normal(size=(120, 16))
    noise = rng.normal(size=(120, 16))
    for name in S.SCORES:
        if name == "ncti":
            continue
        a, b = S.compute_scores(collapsed, y, [name])[name], S.compute_scores(noise, y, [name])[name]
        assert S.oriented(name, a) > S.oriented(name, b), name


def test_input_errors_and_failed_scores_are_nan_with_reason():
    x, y = make(50, 10, 3)
    with pytest.raises(ValueError, match="2-D"):
        S.logme(x[0], y)
    with pytest.raises(ValueError, match="without samples"):
        S.logme(x, y, num_classes=5)
    with pytest.raises(ValueError, match="outside"):
        S.hscore(x, y - 1)
    with pytest.raises(ValueError, match="all zero"):  # regression: streamed LogME of zero features divided by zero
        S.logme_from_stats(NCStats(3, 10).update(torch.zeros(6, 10), torch.tensor([0, 1, 2, 0, 1, 2])))
    with pytest.raises(ValueError, match="all zero"):
        S.logme(np.zeros((6, 10)), np.array([0, 1, 2, 0, 1, 2]))
    out = S.compute_scores(x[:4], y[:4], ["logme", "ncti"], num_classes=3)
    assert math.isfinite(out["logme"]) and math.isnan(out["ncti"]) and "too few" in out["errors"]["ncti"]


# the block benchmark's --quick test: tests/test_selection_blocks.py::test_block_benchmark_quick


def test_one_sample_in_every_class_is_refused_by_every_score():
    # With one sample per class the labels only name the samples: H-score is then exactly
    # min(K - 1, d) and every score the same for any labelling, whatever the features.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 20)), np.arange(6)
    for name in ("logme", "logme_thin", "hscore", "hscore_shrinkage", "ncti"):
        with pytest.raises(ValueError, match="single sample"):
            S.SCORES[name].fn(x, y, num_classes=6)
    stats = NCStats(6, 20).update(torch.from_numpy(x), torch.from_numpy(y))
    for fn in (S.logme_from_stats, S.hscore_from_stats):
        with pytest.raises(ValueError, match="single sample"):
            fn(stats)
    out = S.compute_scores(x, y, ["logme", "hscore"], num_classes=6)
    assert math.isnan(out["logme"]) and "single sample" in out["errors"]["hscore"]
    # one class with a second sample is a measurement again
    x2, y2 = np.vstack([x, rng.normal(size=(1, 20))]), np.append(y, 0)
    assert math.isfinite(S.hscore(x2, y2)) and math.isfinite(S.logme(x2, y2))
