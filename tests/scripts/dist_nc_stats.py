"""Two-process NCStats check, run by tests/test_metrics_distributed.py.

    torchrun --standalone --nproc_per_node 2 tests/scripts/dist_nc_stats.py OUTDIR

Every rank builds the same data set, keeps its own uneven share (rank 1 lacks classes
0 and 1), streams it in uneven batches, then update -> all_reduce -> ncc_pass ->
all_reduce -> compute. A second accumulator is fed on rank 0 only (rank 1 sees no data
and only joins the collectives). Each rank writes OUTDIR/rank{r}.json.
"""

import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

from hf_nc.metrics import NCStats

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

    out = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "local_samples": len(yr),
        "local_classes": sorted(set(yr.tolist())),
        "result": result,
        "lone": lone.compute(classifier_weight=W),
        "errors": errors,
    }
    with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
