"""NC metrics engine against an independent dense float64 NumPy reference of DESIGN.md."""

import numpy as np
import pytest
import torch

from hf_nc.metrics import NCStats, nc_metrics

from nc_reference import make_data, reference_nc  # the dense float64 reference, shared by the metrics tests


# ----------------------------------------------------------------------------- helpers
def assert_close(ours, ref, rtol=1e-9, atol=1e-12, keys=None):
    keys = keys or ref.keys()
    assert set(ours) == set(ref), (sorted(ours), sorted(ref))
    for k in keys:
        assert ours[k] == pytest.approx(ref[k], rel=rtol, abs=atol), (k, ours[k], ref[k])


def split(n, sizes):
    out, start = [], 0
    for s in sizes:
        out.append(slice(start, min(start + s, n)))
        start += s
    if start < n:
        out.append(slice(start, n))
    return out


CASES = [
    # K, d, counts
    (2, 6, [30, 45]),
    (5, 3, [40, 7, 1, 25, 60]),  # d < K, imbalanced, a class with one sample
    (5, 12, [50, 50, 50, 50, 50]),
    (10, 4, [12, 30, 1, 9, 40, 22, 5, 17, 33, 8]),  # d < K
    (10, 32, [12, 30, 2, 9, 40, 22, 5, 17, 33, 1]),  # d > K
]


# ----------------------------------------------------------------------------- reference
@pytest.mark.parametrize("K,d,counts", CASES)
def test_matches_dense_reference(K, d, counts):
    h, y = make_data(K, d, counts, seed=K * 100 + d)
    W = np.random.default_rng(1).normal(size=(K, d))
    ours = nc_metrics(torch.from_numpy(h), torch.from_numpy(y), classifier_weight=torch.from_numpy(W))
    assert_close(ours, reference_nc(h, y, K, W))
    assert ours["num_samples"] == sum(counts) and ours["num_classes"] == K


def test_numpy_and_list_inputs_and_no_nc3_without_weight():
    h, y = make_data(3, 4, [10, 11, 12])
    ours = nc_metrics(h, y.tolist(), num_classes=3)
    ref = reference_nc(h, y, 3)
    assert "nc3" not in ours
    assert_close(ours, ref)


def test_num_classes_larger_than_labels_needs_all_classes():
    h, y = make_data(3, 4, [10, 11, 12])
    with pytest.raises(ValueError, match=r"1 class\(es\) have no samples: \[3\]"):
        nc_metrics(h, y, num_classes=4)


def test_large_offset_naive_second_moment_loses_precision():
    K, d, counts = 4, 6, [40, 25, 60, 33]
    rng = np.random.default_rng(7)
    y = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    centred = rng.normal(size=(K, d))[y] * 0.1 + rng.normal(size=(len(y), d)) * 0.01
    h = centred + 1e4  # large common offset
    ref = reference_nc(centred, y, K)  # translation invariant: computed on centred data

    # naive float64: uncentred second moment minus class-mean outer products
    N = len(y)
    mus = np.stack([h[y == k].mean(0) for k in range(K)])
    sw_naive = (h.T @ h - sum(c * np.outer(m, m) for c, m in zip(counts, mus))) / N
    M = mus - h.mean(0)
    naive_nc1 = np.trace(sw_naive @ np.linalg.pinv(M.T @ M / K, rcond=1e-10, hermitian=True)) / K
    assert abs(naive_nc1 - ref["nc1"]) / ref["nc1"] > 1e-4  # visibly off (about 6e-4 here)

    ours = nc_metrics(torch.from_numpy(h), torch.from_numpy(y))
    assert_close(ours, ref, rtol=1e-8)
    # streaming with a first batch far from the rest still matches (shift is exact algebra)
    stats = NCStats(K, d)
    for sl in split(N, [17, 64, 3]):
        stats.update(torch.from_numpy(h[sl]), torch.from_numpy(y[sl]))
    stats.ncc_pass(torch.from_numpy(h), torch.from_numpy(y))
    assert_close(stats.compute(), ref, rtol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_input_accumulates_in_float64(dtype):
    K, d, counts = 5, 8, [20, 35, 1, 14, 50]
    h, y = make_data(K, d, counts, seed=3)
    x = torch.from_numpy(h).to(dtype)
    W = torch.randn(K, d, dtype=dtype)
    ours = nc_metrics(x, torch.from_numpy(y), classifier_weight=W)
    ref = reference_nc(x.double().numpy(), y, K, W.double().numpy())  # the values as stored
    assert_close(ours, ref)


def _layer_norm_features(K, d, counts, seed=0):
    """float32 LayerNorm outputs (the final features of a ViT): they lie in a hyperplane, so with
    K > d their centred class means span d - 1 directions and the d-th holds float32 rounding."""
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    x = torch.randn(K, d, generator=g)[y] * 2 + torch.randn(len(y), d, generator=g)
    ln = torch.nn.functional.layer_norm(x, (d,), weight=torch.rand(d, generator=g) + 0.5, bias=torch.randn(d, generator=g))
    return ln, y


def test_nc1_of_layer_norm_features_with_more_classes_than_dims_drops_the_rounding_direction():
    # the rounding direction (~3e-8 of the largest spread) passed the float64 tolerance: NC1 came out 25%
    # high here (0.0432 vs 0.0346) and changed with the batch size
    K, d = 150, 32
    x, y = _layer_norm_features(K, d, [2] * 149 + [40])
    ref = reference_nc(x.double().numpy(), y.numpy(), K, rcond=1e-6)  # pinv at float32's precision
    assert reference_nc(x.double().numpy(), y.numpy(), K, rcond=1e-15)["nc1"] > 1.1 * ref["nc1"]  # the direction matters
    for size in (7, 50, len(y)):
        stats = NCStats(K)
        for i in range(0, len(y), size):
            stats.update(x[i : i + size], y[i : i + size])
        assert stats.compute()["nc1"] == pytest.approx(ref["nc1"], rel=1e-9), size
    # given as float64, the same values are taken at their word: the direction is kept as data
    assert nc_metrics(x.double(), y)["nc1"] > 1.1 * ref["nc1"]


def test_merged_statistics_keep_the_coarsest_inputs_rounding_floor():
    K, d = 150, 32
    x, y = _layer_norm_features(K, d, [2] * 149 + [40], seed=1)
    ref = reference_nc(x.double().numpy(), y.numpy(), K, rcond=1e-6)
    a, b = NCStats(K), NCStats(K)
    a.update(x[: len(y) // 2].double(), y[: len(y) // 2])  # the float32 values, as float64
    b.update(x[len(y) // 2 :], y[len(y) // 2 :])  # float32
    assert a.merge(b).compute()["nc1"] == pytest.approx(ref["nc1"], rel=1e-9)


def test_a_list_of_python_floats_is_measured_in_float64():
    # torch.as_tensor made nested lists float32: the features were rounded before they were measured
    h, y = make_data(3, 4, [10, 11, 12], offset=1e4)
    from_list = nc_metrics(h.tolist(), y.tolist(), num_classes=3)
    assert_close(from_list, nc_metrics(torch.from_numpy(h), torch.from_numpy(y)), rtol=1e-12)
    assert_close(from_list, reference_nc(h, y, 3), rtol=1e-8)


# ----------------------------------------------------------------------------- known numbers
def test_known_values_two_classes_in_one_dim():
    a = 0.5
    h = torch.tensor([[-1 - a], [-1 + a], [1 - a], [1 + a]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    out = nc_metrics(h, y, classifier_weight=torch.tensor([[-3.0], [3.0]]))
    assert out["nc1"] == pytest.approx(a**2 / 2, rel=1e-12)  # Sigma_W = a^2, Sigma_B = 1
    assert out["cdnv"] == pytest.approx((2 * a**2) / (2 * 4), rel=1e-12)
    for k in ("nc2_etf", "nc2_equinorm", "nc2_equiangle", "nc3"):
        assert abs(out[k]) < 1e-12, k
    assert out["ncc_acc"] == 1.0


@pytest.mark.parametrize("K,d", [(2, 3), (5, 8), (10, 64)])
def test_perfect_collapse_on_simplex_etf(K, d):
    etf = torch.eye(K, dtype=torch.float64) - 1.0 / K  # (K, K), simplex ETF
    Q, _ = torch.linalg.qr(torch.randn(d, K, dtype=torch.float64))  # (d, K) orthonormal
    means = 4.0 * etf @ Q.T + 7.0  # rotated, scaled, offset
    y = torch.arange(K).repeat(6)
    out = nc_metrics(means[y].float(), y, classifier_weight=etf @ Q.T)
    for k in ("nc1", "nc2_etf", "nc2_equinorm", "nc2_equiangle", "nc3", "cdnv"):
        assert abs(out[k]) < 1e-6, (k, out[k])
    assert out["ncc_acc"] == 1.0


# ----------------------------------------------------------------------------- streaming / merge
def test_streaming_uneven_chunks_equals_one_shot():
    K, d, counts = 10, 16, [12, 30, 1, 9, 40, 22, 5, 17, 33, 8]
    h, y = make_data(K, d, counts, seed=11, offset=100.0)
    H, Y = torch.from_numpy(h), torch.from_numpy(y)
    W = torch.randn(K, d)
    one = nc_metrics(H, Y, classifier_weight=W)
    stats = NCStats(K, d)
    for sl in split(len(y), [1, 0, 50, 7, 100]):
        stats.update(H[sl], Y[sl])
    assert "ncc_acc" not in stats.compute(W)  # no ncc pass yet
    for sl in split(len(y), [33, 3]):
        stats.ncc_pass(H[sl], Y[sl])
    assert_close(stats.compute(W), one, rtol=1e-10)
    assert_close(one, reference_nc(h, y, K, W.numpy()))


def test_merge_equals_concatenation_with_far_apart_shifts():
    K, d = 5, 9
    h1, y1 = make_data(K, d, [10, 1, 20, 5, 0], seed=1)  # lacks class 4
    h2, y2 = make_data(K, d, [7, 9, 0, 13, 30], seed=2, offset=1e3)  # lacks class 2, far away
    h3, y3 = make_data(K, d, [3, 3, 3, 3, 3], seed=3, offset=-5e2)
    parts = [(h1, y1), (h2, y2), (h3, y3)]
    h, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    W = np.random.default_rng(0).normal(size=(K, d))

    shards = []
    for hp, yp in parts:
        s = NCStats(K, d)
        for sl in split(len(yp), [4, 9]):
            s.update(torch.from_numpy(hp[sl]), torch.from_numpy(yp[sl]))
        shards.append(s)
    merged = NCStats(K, d).merge(shards[0]).merge(shards[1]).merge(shards[2])
    merged.merge(NCStats(K, d))  # an empty one changes nothing
    assert merged.num_samples == len(y)
    # the global-shift view: the global mean, class sums and second moment about it
    assert torch.allclose(merged.shift, torch.from_numpy(h.mean(0)), rtol=1e-12, atol=1e-9)
    sums_ref = np.stack([(h[y == k] - h.mean(0)).sum(0) for k in range(K)])
    assert np.allclose(merged.sums.numpy(), sums_ref, rtol=1e-10, atol=1e-8)
    second_ref = (h - h.mean(0)).T @ (h - h.mean(0))
    assert np.allclose(merged.second.numpy(), second_ref, rtol=1e-10, atol=1e-6)
    merged.ncc_pass(torch.from_numpy(h), torch.from_numpy(y))
    ref = reference_nc(h, y, K, W)
    assert_close(merged.compute(W), ref, rtol=1e-9)
    # merging in the other order (re-centring onto the far shift) agrees too
    other = NCStats(K, d).merge(shards[1]).merge(shards[2]).merge(shards[0])
    other.ncc_pass(torch.from_numpy(h), torch.from_numpy(y))
    assert_close(other.compute(W), ref, rtol=1e-9)


def test_merge_after_ncc_pass_raises_instead_of_a_stale_ncc_acc():
    # issue 9 item 17: the NCC counts were made with the means before the merge
    K, d = 3, 4
    h, y = make_data(K, d, [10, 12, 14], seed=5)
    h2, y2 = make_data(K, d, [9, 9, 9], seed=6, offset=3.0)
    H, Y = torch.from_numpy(h), torch.from_numpy(y)
    done = NCStats(K, d).update(H, Y).ncc_pass(H, Y)
    fresh = NCStats(K, d).update(h2, y2)
    with pytest.raises(RuntimeError, match=r"merge\(\) after ncc_pass\(\).*stale"):
        done.merge(fresh)
    with pytest.raises(RuntimeError, match=r"merge\(\) after ncc_pass\(\)"):
        fresh.merge(done)
    # the supported order: merge, then one ncc pass over all the data
    both = NCStats(K, d).update(H, Y).merge(fresh)
    hh, yy = np.concatenate([h, h2]), np.concatenate([y, y2])
    both.ncc_pass(hh, yy)
    assert both.compute()["ncc_acc"] == pytest.approx(reference_nc(hh, yy, K)["ncc_acc"], abs=1e-15)


# ----------------------------------------------------------------------------- state rules
def test_update_after_ncc_pass_raises():
    h, y = make_data(3, 4, [5, 6, 7])
    s = NCStats(3, 4).update(h, y).ncc_pass(h, y)
    with pytest.raises(RuntimeError, match="after ncc_pass"):
        s.update(h, y)


def test_all_reduce_is_a_noop_on_one_process():
    h, y = make_data(3, 4, [5, 6, 7])
    s = NCStats(3, 4).update(h, y).all_reduce().ncc_pass(h, y).all_reduce()
    assert_close(s.compute(), nc_metrics(h, y), rtol=1e-12)


# ----------------------------------------------------------------------------- bad input
def _ok():
    h, y = make_data(3, 4, [5, 6, 7])
    return torch.from_numpy(h), torch.from_numpy(y)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda h, y: (h.clone().index_fill_(0, torch.tensor([3]), float("nan")), y), "NaN or inf"),
        (lambda h, y: (h.clone().index_fill_(0, torch.tensor([0]), float("inf")), y), "NaN or inf"),
        (lambda h, y: (h, torch.where(y == 1, 3, y)), r"labels outside \[0, 3\).*\[3\]"),
        (lambda h, y: (h, torch.where(y == 1, -1, y)), r"labels outside \[0, 3\).*\[-1\]"),
        (lambda h, y: (h[:-1], y), "differ in length: 17 feature rows, 18 labels"),
        (lambda h, y: (h[:, 0], y), r"features must be 2-D"),
        (lambda h, y: (h[None], y), r"features must be 2-D"),
        (lambda h, y: (h[:, :3], y), "features have dim 3, expected dim 4"),
        (lambda h, y: (h, y.double()), "labels must be integers"),
        (lambda h, y: (h, y[:, None]), r"labels must be 1-D"),
    ],
)
def test_bad_batches_raise(make, match):
    h, y = make(*_ok())
    with pytest.raises(ValueError, match=match):
        NCStats(3, 4).update(h, y)
    if "expected dim" not in match:  # nc_metrics takes d from the features
        with pytest.raises(ValueError, match=match):
            nc_metrics(h, y, num_classes=3)
    good = NCStats(3, 4).update(*_ok())
    with pytest.raises(ValueError, match=match):
        good.ncc_pass(h, y)


def test_overflowing_float64_features_are_named():
    h, y = _ok()
    with pytest.raises(ValueError, match="too large: their squared norms overflow float64"):
        NCStats(3, 4).update(h * 1e200, y)


def test_empty_classes_are_named_at_compute():
    h, y = _ok()
    s = NCStats(6, 4).update(h, y)
    with pytest.raises(ValueError, match=r"3 class\(es\) have no samples: \[3, 4, 5\]"):
        s.compute()
    with pytest.raises(ValueError, match=r"have no samples: \[3, 4, 5\]"):
        s.ncc_pass(h, y)
    with pytest.raises(ValueError, match="no samples were accumulated"):
        NCStats(3, 4).compute()


def test_bad_num_classes_dim_weight_and_merge():
    h, y = _ok()
    with pytest.raises(ValueError, match="at least 2"):
        NCStats(1, 4)
    with pytest.raises(ValueError, match="at least 2"):
        nc_metrics(h, torch.zeros_like(y))
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        NCStats(3, 0)
    s = NCStats(3, 4).update(h, y)
    with pytest.raises(ValueError, match=r"classifier_weight must have shape .* = \(3, 4\), got \(4, 3\)"):
        s.compute(classifier_weight=torch.randn(4, 3))
    with pytest.raises(ValueError, match="classifier_weight contains NaN"):
        s.compute(classifier_weight=torch.full((3, 4), float("nan")))
    with pytest.raises(ValueError, match=r"cannot merge NCStats with \(num_classes, dim\) = \(4, 4\)"):
        s.merge(NCStats(4, 4))
    with pytest.raises(ValueError, match=r"cannot merge NCStats with \(num_classes, dim\) = \(3, 5\)"):
        s.merge(NCStats(3, 5))


def test_single_sample_class_is_valid():
    h, y = make_data(3, 4, [1, 6, 7])
    out = nc_metrics(h, y)
    assert_close(out, reference_nc(h, y, 3))


def test_one_sample_in_every_class_is_refused_not_reported_as_collapse():
    """One sample per class makes every within-class scatter 0: NC1 = CDNV = 0 whatever the
    features (random ones here) is no measurement, so it is an error; a second sample in any
    class makes it defined again (and equal to the dense reference)."""
    h, y = make_data(5, 8, [1] * 5)
    with pytest.raises(ValueError, match="every one of the 5 classes has a single sample"):
        nc_metrics(h, y)
    s = NCStats(5, 8)
    for i in range(5):  # streamed one row at a time
        s.update(h[i : i + 1], y[i : i + 1])
    with pytest.raises(ValueError, match="single sample.*NC1, CDNV"):
        s.compute()
    with pytest.raises(ValueError, match="single sample"):  # before a second pass over the data, not after it
        s.ncc_pass(h[:1], y[:1])
    h2, y2 = make_data(5, 8, [2, 1, 1, 1, 1])
    assert_close(nc_metrics(h2, y2), reference_nc(h2, y2, 5))


# ----------------------------------------------------------------------------- device-side checks
class _NoHostSync:
    """Makes every host read of a tensor value raise (item, tolist, bool, float, int, numpy)."""

    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu")

    def __enter__(self):
        def refuse(*a, **k):
            raise AssertionError("host sync in a per-batch call")

        self.saved = {n: getattr(torch.Tensor, n) for n in self.NAMES}
        for n in self.NAMES:
            setattr(torch.Tensor, n, refuse)
        return self

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(torch.Tensor, n, f)


def test_update_and_ncc_pass_never_read_tensor_values_with_deferred_checks():
    # issue 13 section 2: no .item()/.cpu()/branching on tensor values per batch
    K, d = 4, 6
    h, y = make_data(K, d, [30, 31, 32, 33], seed=12, offset=5.0)
    H, Y = torch.from_numpy(h).float(), torch.from_numpy(y)
    stats = NCStats(K, d, check_every=0)
    bad = H[:7].clone()
    bad[3, 2] = float("nan")
    with _NoHostSync():
        for i in range(0, len(y), 9):  # 14 batches: past every re-centring but the 32nd
            stats.update(H[i : i + 9], Y[i : i + 9])
    stats.ncc_pass(H[:5], Y[:5])  # the first ncc_pass checks (one sync)
    with _NoHostSync():
        stats.ncc_pass(H[5:], Y[5:])
    assert_close(stats.compute(), reference_nc(H.double().numpy(), y, K), rtol=1e-9)
    # and a bad batch is only reported at compute(), naming it
    late = NCStats(K, d, check_every=0)
    with _NoHostSync():
        late.update(H, Y).update(bad, Y[:7]).update(H[:3], torch.tensor([0, 9, 1]))
    with pytest.raises(ValueError) as err:
        late.compute()
    msg = str(err.value)
    assert "features contain NaN or inf values (batch 1 given to update())" in msg
    assert "labels outside [0, 4) (num_classes=4): [9] (batch 2 given to update()" in msg
    with pytest.raises(ValueError, match="batch 1"):  # deferred errors stay
        late.compute()


def test_check_every_raises_at_the_bounded_interval():
    h, y = _ok()
    bad = h.clone()
    bad[0, 0] = float("inf")
    stats = NCStats(3, 4, check_every=3)
    stats.update(h, y).update(bad, y)  # calls 0, 1: no check yet
    with pytest.raises(ValueError, match=r"NaN or inf values \(batch 1 given to update\(\)\)"):
        stats.update(h, y)  # call 2: the third call checks
    assert stats.check_every == 3
    assert NCStats(3, 4).update(h, y).check_every == 1  # CPU default: every call
    assert NCStats(3, 4, check_every=0).update(h, y).check_every == 0


def test_cpu_default_raises_at_the_bad_call_and_the_batch_is_skipped():
    h, y = _ok()
    bad = h.clone()
    bad[1] = float("nan")
    stats = NCStats(3, 4).update(h[:9], y[:9])
    with pytest.raises(ValueError, match=r"NaN or inf values \(batch 1 given"):
        stats.update(bad, y)
    stats.update(h[9:], y[9:])  # go on: the bad batch was left out
    stats.ncc_pass(h, y)
    assert_close(stats.compute(), reference_nc(h.numpy(), y.numpy(), 3), rtol=1e-10)


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_features_accumulate_in_float64_on_the_device(dtype):
    K, d, counts = 10, 40, [12, 30, 1, 9, 40, 22, 5, 17, 33, 8]
    h, y = make_data(K, d, counts, seed=21)
    x, yy = torch.from_numpy(h).to("cuda", dtype), torch.from_numpy(y).cuda()
    W = torch.randn(K, d, device="cuda")
    stats = NCStats(K, d)
    for sl in split(len(y), [5, 60, 1]):
        stats.update(x[sl], yy[sl])
    assert stats.device.type == "cuda" and stats._S.dtype == torch.float64
    stats.ncc_pass(x, yy)
    ref = reference_nc(x.double().cpu().numpy(), y, K, W.double().cpu().numpy())
    assert_close(stats.compute(W), ref)
    assert_close(nc_metrics(x, yy, classifier_weight=W), ref)
    # CUDA default: checks on the device, raised at compute() (no host sync per batch)
    stats_bad = NCStats(K, d)
    stats_bad.update(x[:20], yy[:20])
    stats_bad.update(torch.full((2, d), float("nan"), device="cuda", dtype=dtype), yy[:2])
    assert stats_bad.check_every == 0
    with pytest.raises(ValueError, match=r"NaN or inf values \(batch 1 given"):
        stats_bad.compute()
    f32 = NCStats(K, d, dtype=torch.float32)
    for sl in split(len(y), [5, 60, 1]):
        f32.update(x[sl], yy[sl])
    f32.ncc_pass(x, yy)
    got = f32.compute(W)
    for k in ("nc1", "nc2_etf", "nc2_equinorm", "nc2_equiangle", "nc3", "cdnv"):
        assert got[k] == pytest.approx(ref[k], rel=1e-3, abs=1e-5), k
