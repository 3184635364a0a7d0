"""The shipped `evaluate` metric module loads offline and agrees with nc_metrics."""

import os
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch

from hf_nc.metrics import EVALUATE_METRIC_PATH, nc_metrics


def _data(K=4, d=6, n=90, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    h = rng.normal(size=(K, d))[y] * 2 + rng.normal(size=(n, d))
    return h, y


def test_metric_folder_is_shipped_in_the_package():
    path = Path(EVALUATE_METRIC_PATH)
    assert path.is_dir() and (path / f"{path.name}.py").is_file()
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: no Hub


@pytest.mark.parametrize("target", ["folder", "file"])
def test_evaluate_load_offline_matches_nc_metrics(target):
    path = EVALUATE_METRIC_PATH if target == "folder" else str(Path(EVALUATE_METRIC_PATH) / "neural_collapse.py")
    metric = evaluate.load(path)
    h, y = _data()
    W = np.random.default_rng(1).normal(size=(4, 6))
    got = metric.compute(features=h, labels=y, classifier_weight=W)
    want = nc_metrics(torch.from_numpy(h), torch.from_numpy(y), classifier_weight=torch.from_numpy(W))
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-15), k


def test_evaluate_float32_batches_and_num_classes():
    metric = evaluate.load(EVALUATE_METRIC_PATH)
    h, y = _data(seed=3)
    h32 = h.astype(np.float32)
    for sl in (slice(0, 37), slice(37, 90)):
        metric.add_batch(features=h32[sl], labels=y[sl].tolist())
    got = metric.compute(num_classes=4)
    want = nc_metrics(torch.from_numpy(h32), torch.from_numpy(y), num_classes=4)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    with pytest.raises(ValueError, match=r"have no samples: \[4\]"):
        metric.compute(features=h32, labels=y, num_classes=5)
