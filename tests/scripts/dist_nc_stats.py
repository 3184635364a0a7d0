"""Two-process NCStats check, run by tests/test_metrics_distributed.py.

    torchrun --standalone --nproc_per_node 2 tests/scripts/dist_nc_stats.py OUTDIR

Every rank builds the same data set, keeps its own uneven share (rank 1 lacks classes
0 and 1), streams it in uneven batches, then update -> all_reduce -> ncc_pass ->
all_reduce -> compute. A second accumulator is fed on rank 0 only (rank 1 sees no data
and only joins the collectives), a third likewise with ``dim=None`` on the empty rank (it
takes d from rank 0). One-shot ``nc_metrics`` runs on local tensors (local by default, the
union with ``distributed=True``); ranks that disagree on K or d get a ValueError naming
both. Each rank writes OUTDIR/rank{r}.json.
"""

import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

import evaluate

from hf_nc.metrics import EVALUATE_METRIC_PATH, NCStats, nc_metrics

K, D = 6, 11


def make_data():
    """The full data set (features float32 with an offset, labels, classifier weight)."""
    rng = np.random.default_rng(1234)
    counts = [30, 1, 45, 12, 60, 25]
    y = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    rng.shuffle(y)
    h = rng.normal(size=(K, D))[y] * 2.0 + rng.normal(size=(len(y), D)) + 50.0
    W = rng.normal(size=(K, D))
    return torch.from_numpy(h).float(), torch.from_numpy(y), torch.from_numpy(W)


def make_layer_norm_data():
    """float32 LayerNorm features with more classes (K_LN) than dims (D): NC1 needs the inputs'
    rounding floor (their centred means hold a float32-rounding direction)."""
    g = torch.Generator().manual_seed(5)
    y = torch.arange(K_LN).repeat_interleave(3)
    x = torch.randn(K_LN, D, generator=g)[y] * 2 + torch.randn(len(y), D, generator=g)
    return torch.nn.functional.layer_norm(x, (D,), weight=torch.rand(D, generator=g) + 0.5), y


K_LN = 16


def shard(rank, h, y):
    idx = torch.arange(len(y))
    on_rank1 = (y >= 2) & (idx % 10 < 7)  # rank 1: classes 2..5 only, most of them
    keep = on_rank1 if rank == 1 else ~on_rank1
    return h[keep], y[keep]


def batches(h, y, size):
    return [(h[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def main(outdir):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    h, y, W = make_data()
    hr, yr = shard(rank, h, y)
    size = 13 if rank == 0 else 41

    stats = NCStats(K, D)
    for xb, yb in batches(hr, yr, size):
        stats.update(xb, yb)
    errors = {}
    try:
        stats.ncc_pass(hr[:2], yr[:2])
    except RuntimeError as e:
        errors["ncc_before_reduce"] = str(e)
    stats.all_reduce()
    try:
        stats.update(hr[:2], yr[:2])
    except RuntimeError as e:
        errors["update_after_reduce"] = str(e)
    for xb, yb in batches(hr, yr, size + 5):
        stats.ncc_pass(xb, yb)
    stats.all_reduce()
    result = stats.compute(classifier_weight=W)

    # a rank without any data: it only takes part in the collectives
    lone = NCStats(K, D)
    if rank == 0:
        for xb, yb in batches(h, y, 50):
            lone.update(xb, yb)
    lone.all_reduce()
    if rank == 0:
        for xb, yb in batches(h, y, 64):
            lone.ncc_pass(xb, yb)
    lone.all_reduce()

    # a rank without data that does not even know d: it takes it from the other ranks
    lone_nodim = NCStats(K, dim=None) if rank == 1 else NCStats(K)
    if rank == 0:
        for xb, yb in batches(h, y, 50):
            lone_nodim.update(xb, yb)
    lone_nodim.all_reduce()
    if rank == 0:
        lone_nodim.ncc_pass(h, y)
    lone_nodim.all_reduce()

    # the same, float32 LayerNorm features with K > d: the empty rank takes the inputs' rounding floor too
    lone_ln = NCStats(K_LN, D)
    if rank == 0:
        hl, yl = make_layer_norm_data()
        lone_ln.update(hl, yl)
    lone_ln.all_reduce()

    # one-shot metrics of local tensors work inside a distributed program (issue 9 item 5)
    local = nc_metrics(hr, yr - yr.min())  # rank 1 holds classes 2..5 only: relabel them 0..3
    metric = evaluate.load(EVALUATE_METRIC_PATH)
    ev = metric.compute(features=h.numpy(), labels=y.numpy())  # the full data, on each rank
    union = nc_metrics(hr, yr, classifier_weight=W, distributed=True)  # K from all ranks' labels

    # ranks that disagree on K or d: a ValueError naming both, on every rank (issue 9 item 22)
    for name, (k, d_) in {"K": (K + rank, D), "d": (K, D + rank)}.items():
        bad = NCStats(k, d_)
        bad.update(torch.randn(4, d_), torch.arange(4) % k)
        try:
            bad.all_reduce()
        except ValueError as e:
            errors[f"disagree_{name}"] = str(e)
    # bad input on one rank: every rank raises at all_reduce, naming the rank and batch
    nan = NCStats(K, D)
    xb = h[:5].clone()
    if rank == 1:
        xb[2, 3] = float("nan")
    nan_stats = NCStats(K, D, check_every=0)
    nan_stats.update(h[:5], y[:5]).update(xb, y[:5])
    try:
        nan_stats.all_reduce()
    except ValueError as e:
        errors["nan_on_rank1"] = str(e)
    del nan

    out = {
        "rank": rank,
        "lone_nodim": lone_nodim.compute(classifier_weight=W),
        "local": local,
        "evaluate": ev,
        "union": union,
        "world_size": dist.get_world_size(),
        "local_samples": len(yr),
        "local_classes": sorted(set(yr.tolist())),
        "result": result,
        "lone": lone.compute(classifier_weight=W),
        "lone_ln_nc1": lone_ln.compute()["nc1"],
        "errors": errors,
    }
    with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
