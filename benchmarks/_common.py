"""Pieces shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, so this folder is on sys.path)."""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               clock: Callable[[], float] = time.perf_counter) -> float:
    """Times one training step: forward, cross-entropy, backward and an optimizer step.

    Args:
        model: an image classifier called as ``model(pixel_values=x)`` with ``.logits`` out.
        optimizer: the optimizer of the model's trainable parameters.
        x: the batch the model runs on (images, or cached prefix rows).
        y: the labels of the batch.
        clock: the clock to read before and after (``time.perf_counter``, or ``time.process_time``
            for this process's CPU time).

    Returns:
        The seconds the step took on ``clock``, after CUDA has finished when ``x`` is on a GPU.
    """
    start = clock()
    loss = F.cross_entropy(model(pixel_values=x).logits, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if x.is_cuda:
        torch.cuda.synchronize()
    return clock() - start


def strict(v):
    """JSON-safe: non-finite floats become None, numpy scalars Python numbers."""
    if isinstance(v, dict):
        return {str(k): strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [strict(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def t_interval(x) -> tuple[float, float, float, int]:
    """Mean and 95% t interval of ``x`` (None and non-finite values dropped).

    Args:
        x: the values (any iterable of numbers; None and NaN are left out).

    Returns:
        ``(mean, low, high, n)``: NaN interval for n < 2, all NaN for n = 0.
    """
    from scipy import stats

    x = np.asarray([v for v in x if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    m = float(x.mean())
    if n < 2:
        return m, math.nan, math.nan, n
    h = float(stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return m, m - h, m + h, n


def boot_mean(x, num_boot: int, rng: np.random.Generator) -> list[float]:
    """95% percentile-bootstrap interval of the mean of ``x`` (non-finite values dropped).

    Args:
        x: the values (e.g. one Kendall tau per case).
        num_boot: the number of resamples.
        rng: the generator the resamples are drawn from (advanced by one ``integers`` call).

    Returns:
        ``[low, high]``; ``[nan, nan]`` for fewer than 2 finite values.
    """
    x = np.asarray([v for v in x if math.isfinite(v)], dtype=np.float64)
    if len(x) < 2:
        return [math.nan, math.nan]
    means = x[rng.integers(0, len(x), (num_boot, len(x)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
