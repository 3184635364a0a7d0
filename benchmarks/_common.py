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
