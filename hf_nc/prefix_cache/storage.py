"""Where the cached rows live: a RAM tensor up to the memory budget, else a memory-mapped ``.npy`` file."""

from __future__ import annotations

import os
import re
import shutil
from typing import Optional

import numpy as np
import torch

from .layout import PrefixLayout

#: Default RAM budget of a cache; larger caches go to a memory-mapped file.
DEFAULT_MEMORY_BUDGET = 4 * 2**30

_NUMPY_OF = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64, torch.bfloat16: np.uint16}


def _parse_bytes(value) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?B)?\s*", str(value), flags=re.I)
    if not m:
        raise ValueError(f"memory_budget must be a number of bytes or a size like '4GB' / '512MiB', got {value!r}")
    return int(float(m.group(1)) * 1024 ** "_KMGT".index(m.group(2).upper() or "_"))


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class _Storage:
    """``(N, rows, d)`` hidden states in RAM (a torch tensor) or in a numpy memmap file."""

    def __init__(self, n: int, layout: PrefixLayout, in_ram: bool, path: Optional[str]):
        shape = (n, *layout.row_shape)
        self.dtype, self.path = layout.dtype, path
        if in_ram:
            self.tensor, self.memmap = torch.empty(shape, dtype=layout.dtype), None
        else:
            self.tensor = None
            self.memmap = np.lib.format.open_memmap(path, mode="w+", dtype=_NUMPY_OF[layout.dtype], shape=shape)

    def write(self, index: torch.Tensor, rows: torch.Tensor) -> None:
        rows = rows.detach().to("cpu", self.dtype)
        if self.tensor is not None:
            self.tensor[index] = rows
        else:
            arr = rows.view(torch.int16).numpy().view(np.uint16) if self.dtype == torch.bfloat16 else rows.numpy()
            self.memmap[index.numpy()] = arr

    def read(self, i) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor[i]
        arr = np.array(self.memmap[i])  # a private copy: the memmap is read-only for torch
        t = torch.from_numpy(arr)
        return t.view(torch.bfloat16) if self.dtype == torch.bfloat16 else t

    def flush(self) -> None:
        if self.memmap is not None:
            self.memmap.flush()

    def __getstate__(self) -> dict:
        # DataLoader workers started with "spawn" get a pickled copy: send a memmap's path, not its data.
        state = dict(self.__dict__)
        if self.memmap is not None:
            self.memmap.flush()
            state["memmap"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.tensor is None and self.path is not None and os.path.exists(self.path):
            self.memmap = np.load(self.path, mmap_mode="r")


def _remove_files(tmpdir: Optional[str], path: Optional[str]) -> None:
    if tmpdir:
        shutil.rmtree(tmpdir, ignore_errors=True)
    elif path and os.path.exists(path):
        os.remove(path)
