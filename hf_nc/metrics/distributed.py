"""torch.distributed helpers for reducing NC statistics (sums of float64 buffers only)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when torch.distributed is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """True on rank 0, and on a single process."""
    return not is_distributed() or dist.get_rank() == 0


def default_device() -> torch.device:
    """The device a rank's collective buffers must live on for the current backend.

    NCCL needs CUDA tensors (the current CUDA device); other backends take CPU tensors.
    """
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum_(buffer: torch.Tensor) -> torch.Tensor:
    """Sums ``buffer`` over all processes in place (a no-op on one process).

    Args:
        buffer: A contiguous tensor, identical in shape and dtype on every rank.

    Returns:
        ``buffer``, now holding the sum over ranks.
    """
    if is_distributed():
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer
