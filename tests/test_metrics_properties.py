"""Property tests: NCStats over random batchings, orders, shifts and dtypes = the dense reference.

hypothesis draws the data set (K, d, per-class counts, a common offset up to 1e5, the
feature dtype, ordinary / collapsed / barely separated classes), a batching (sizes 0, 1 and larger, mixed) and an order; the streamed
statistics, a merge of shards and float32 accumulation are compared with
``tests/nc_reference.py``. Kept to a few seconds (``max_examples``).
"""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hf_nc.metrics import NCStats
from nc_reference import reference_nc

KEYS = ("nc1", "nc2_etf", "nc2_equinorm", "nc2_equiangle", "nc3", "cdnv", "ncc_acc")
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def datasets(draw):
    K = draw(st.integers(2, 7))
    d = draw(st.integers(1, 12))
    counts = draw(st.lists(st.integers(1, 40), min_size=K, max_size=K))
    if max(counts) < 2:  # one sample in every class is refused (no within-class variability to measure)
        counts[0] = 2
    seed = draw(st.integers(0, 2**31 - 1))
    offset = draw(st.sampled_from([0.0, 1.0, -37.5, 1e3, 1e5]))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    # between-class vs within-class scale: ordinary, collapsed (1e-4 within), or barely
    # separated classes (1e-3 between: issue 9 item 3's regime)
    between, within = draw(st.sampled_from([(3.0, 1.0), (3.0, 1e-4), (1e-3, 1.0)]))
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    rng.shuffle(y)
    means = rng.normal(size=(K, d)) * between
    h = means[y] + rng.normal(size=(len(y), d)) * rng.uniform(0.5, 2.0, size=d) * within + offset
    x = torch.from_numpy(h).to(dtype)
    # the batching: cut points (duplicates give empty batches, adjacent ones 1-sample batches)
    cuts = sorted(draw(st.lists(st.integers(0, len(y)), max_size=8)))
    order = draw(st.permutations(range(len(y)))) if draw(st.booleans()) else list(range(len(y)))
    W = rng.normal(size=(K, d))
    return K, d, x, torch.from_numpy(y), cuts, torch.tensor(order), W


def _batches(x, y, cuts, order):
    x, y = x[order], y[order]
    edges = [0, *cuts, len(y)]
    return [(x[a:b], y[a:b]) for a, b in zip(edges[:-1], edges[1:])]


def _reference(K, x, y, W):
    return reference_nc(x.double().numpy(), y.numpy(), K, W)  # the values as stored


def _close(got, want, rtol, atol=1e-9):  # the float64 reference itself errs by ~4e-10 at offset 1e5 (K=2, d=1: nc2_etf 0 exactly)
    for k in KEYS:
        assert got[k] == pytest.approx(want[k], rel=rtol, abs=atol), (k, got[k], want[k])
    assert got["num_samples"] == want["num_samples"]


def _well_conditioned(K, x, y):
    """Skip draws whose Sigma_B is so ill-conditioned that the tolerance decides NC1: the reference's
    rcond, or NCStats' rounding floor of the inputs (a class-mean spread within a few roundings of
    float32 features at offset 1e5 is dropped as rounding)."""
    h = x.double().numpy()
    mus = np.stack([h[y.numpy() == k].mean(0) for k in range(K)])
    s = np.linalg.svd(mus - h.mean(0), compute_uv=False)
    r = min(K - 1, h.shape[1])
    floor = 2 * torch.finfo(x.dtype).eps * np.sqrt((h * h).sum(1).mean())
    return s[r - 1] > 1e-4 * s[0] and s[r - 1] / np.sqrt(K) > 100 * floor


@SETTINGS
@given(datasets())
def test_streaming_any_batching_and_order_equals_dense_reference(data):
    K, d, x, y, cuts, order, W = data
    assume(_well_conditioned(K, x, y))
    stats = NCStats(K, d)
    for xb, yb in _batches(x, y, cuts, order):
        stats.update(xb, yb)
    for xb, yb in _batches(x, y, cuts[::2], order.flip(0)):
        stats.ncc_pass(xb, yb)
    _close(stats.compute(W), _reference(K, x, y, W), rtol=1e-7)


@SETTINGS
@given(datasets(), st.integers(1, 4))
def test_merged_shards_equal_dense_reference(data, n_shards):
    K, d, x, y, cuts, order, W = data
    assume(_well_conditioned(K, x, y))
    parts = _batches(x, y, cuts, order)
    shards = [NCStats(K, d) for _ in range(n_shards)]
    for i, (xb, yb) in enumerate(parts):
        shards[i % n_shards].update(xb, yb)
    merged = NCStats(K, d)
    for s in shards[::-1]:
        merged.merge(s)
    merged.ncc_pass(x, y)
    _close(merged.compute(W), _reference(K, x, y, W), rtol=1e-7)


@SETTINGS
@given(datasets())
def test_float32_accumulation_error_bound(data):
    """float32 statistics (for GPUs with slow float64) stay within 1e-3 of the reference.

    The per-class shifts keep the accumulated deviations within-class sized, so the float32
    error does not grow with the common offset (1e5 here, where a float32 second moment
    about zero would lose every digit).
    """
    K, d, x, y, cuts, order, W = data
    assume(_well_conditioned(K, x, y))
    stats = NCStats(K, d, dtype=torch.float32)
    for xb, yb in _batches(x, y, cuts, order):
        stats.update(xb, yb)
    stats.ncc_pass(x, y)
    got, want = stats.compute(W), _reference(K, x, y, W)
    for k in ("nc1", "nc2_etf", "nc2_equinorm", "nc2_equiangle", "nc3", "cdnv"):
        assert got[k] == pytest.approx(want[k], rel=1e-3, abs=1e-5), (k, got[k], want[k])
    # ncc_acc: the float32 means may flip a sample on a near-tie, never more than a few
    assert abs(got["ncc_acc"] - want["ncc_acc"]) * want["num_samples"] <= 2


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_float32_accumulation_large_data_error_bound(offset):
    """A larger run (N = 20,000, 8 classes, d = 32) in float32: relative error below 1e-4."""
    rng = np.random.default_rng(0)
    K, d, n = 8, 32, 20_000
    y = rng.integers(0, K, n)
    h = rng.normal(size=(K, d))[y] * 2 + rng.normal(size=(n, d)) + offset
    x = torch.from_numpy(h).float()
    stats = NCStats(K, d, dtype=torch.float32)
    for i in range(0, n, 1024):
        stats.update(x[i : i + 1024], torch.from_numpy(y[i : i + 1024]))
    stats.ncc_pass(x, torch.from_numpy(y))
    got, want = stats.compute(), reference_nc(x.double().numpy(), y, K)
    assert stats.second.dtype == torch.float64 and stats._S.dtype == torch.float32
    for k in ("nc1", "nc2_etf", "nc2_equinorm", "nc2_equiangle", "cdnv", "ncc_acc"):
        assert got[k] == pytest.approx(want[k], rel=1e-4), (k, got[k], want[k])
