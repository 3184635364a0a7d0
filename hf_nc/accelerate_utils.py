"""Accelerate set-up shared by the recipes."""

from __future__ import annotations

import torch
from accelerate import Accelerator


def build_accelerator(**kwargs) -> Accelerator:
    """An ``Accelerator`` that also goes multi-process on CPU-only machines.

    Accelerate treats ``torchrun --nproc_per_node 2`` on a machine without GPUs as ONE
    process unless it is told to use the CPU; then it runs gloo with one rank per process.
    """
    if not torch.cuda.is_available():
        kwargs.setdefault("cpu", True)
    return Accelerator(**kwargs)
