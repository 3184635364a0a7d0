"""The :class:`PrefixCache` dataset and how it is built (one pre-pass; DDP shards exchanged by all_gather)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import warnings
import weakref
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..backbones import resolve_backbone
from .attach import PrefixCacheHandle
from .capture import _Capture, _model_inputs
from .checks import _preserved_rng, dataset_problems, first_tuned_block, prefix_cache_problems, prefix_weights
from .layout import PrefixCacheError, PrefixLayout
from .storage import DEFAULT_MEMORY_BUDGET, _human, _parse_bytes, _remove_files, _Storage

logger = logging.getLogger(__name__)


class PrefixCache(Dataset):
    """Hidden states at the first tuned block, one row per training image, as a Dataset.

    Build it with :meth:`build`; ``cache[i]`` is ``{"pixel_values": (parts*T, d) tensor,
    "labels": int}`` for item ``i`` of the dataset it was built from. Pass it as the Trainer's
    ``train_dataset`` (and an ``attach``-ed model) instead of the image dataset.

    Attributes:
        layout: What a row holds (:class:`PrefixLayout`).
        nbytes: Size of the cached hidden states.
        on_disk: Whether they live in a memory-mapped file (``path``) rather than RAM.
    """

    def __init__(self, storage: _Storage, labels: Optional[torch.Tensor], layout: PrefixLayout,
                 input_key: str = "pixel_values", label_key: str = "labels", tmpdir: Optional[str] = None):
        self._storage, self._labels, self.layout = storage, labels, layout
        self.input_key, self.label_key = input_key, label_key
        self._tmpdir = tmpdir
        self._finalizer = weakref.finalize(self, _remove_files, tmpdir, storage.path) if storage.path else None

    # -- Dataset --------------------------------------------------------------------------
    def __len__(self) -> int:
        return int((self._storage.tensor if self._storage.tensor is not None else self._storage.memmap).shape[0])

    def __getitem__(self, i: int) -> dict:
        item = {self.input_key: self._storage.read(int(i))}
        if self._labels is not None:
            item[self.label_key] = int(self._labels[int(i)])
        return item

    @property
    def on_disk(self) -> bool:
        return self._storage.memmap is not None

    @property
    def path(self) -> Optional[str]:
        return self._storage.path

    @property
    def nbytes(self) -> int:
        return len(self) * self.layout.row_bytes

    @property
    def labels(self) -> Optional[torch.Tensor]:
        return self._labels

    @property
    def targets(self) -> Optional[np.ndarray]:
        """The labels as a numpy array (torchvision style), so that label readers such as NCTrainer's
        stratified train subset get them without reading the cached rows."""
        return None if self._labels is None else self._labels.numpy()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_finalizer"] = None  # only the original deletes the file
        return state

    def close(self) -> None:
        """Drops the hidden states (and deletes a memory-mapped file the cache created)."""
        self._storage.tensor = None
        self._storage.memmap = None
        if self._finalizer is not None:
            self._finalizer()

    def __repr__(self) -> str:
        where = f"on disk at {self.path}" if self.on_disk else "in RAM"
        return (f"PrefixCache({len(self)} images, block {self.layout.block}, rows {self.layout.row_shape}, "
                f"{self.layout.dtype}, {_human(self.nbytes)} {where})")

    # -- build ----------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        model: nn.Module,
        dataset,
        collate_fn: Optional[Callable] = None,
        batch_size: int = 64,
        *,
        block: Optional[int] = None,
        memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
        cache_dir: Optional[str] = None,
        device: Optional[torch.device | str] = None,
        num_workers: int = 0,
        progress: bool = True,
        check_dataset: bool = True,
        input_key: str = "pixel_values",
        label_key: str = "labels",
        autocast_dtype: Optional[torch.dtype] = None,
    ) -> "PrefixCache":
        """Runs the frozen prefix once over ``dataset`` and keeps its output.

        Args:
            model: The model about to be trained (``PeftModel`` with Layer FT / SCL FT / head FT, or a
                model whose blocks are all frozen for a linear probe).
            dataset: Map-style dataset of the training items (e.g. ``train.with_transform(...)``)
                yielding ``input_key`` images and ``label_key`` labels, WITHOUT augmentation.
            collate_fn: Collates items into a batch (``hf_nc.data.collate_fn``); default stacks.
            batch_size: Batch size of the pre-pass (no effect on the result beyond float rounding).
            block: The cut; default :func:`first_tuned_block`.
            memory_budget: Largest cache kept in RAM (bytes or "4GB"); larger ones go to a
                memory-mapped ``.npy`` file in ``cache_dir``.
            cache_dir: Folder of the memory-mapped file; default a new temporary folder. The file
                (and a temporary folder) is deleted on ``close()`` or when the cache is garbage
                collected; a given folder is kept.
            device: Where the prefix runs; default the model's device.
            num_workers: DataLoader workers of the pre-pass.
            progress: Show a progress bar and print the cache size before building (main process).
            check_dataset: Refuse datasets whose items change between reads (augmentation).
            input_key, label_key: Batch keys of the images and labels.
            autocast_dtype: Run the pre-pass under ``torch.autocast`` with this dtype, as the
                training run does with mixed precision (Trainer ``bf16=True`` -> ``torch.bfloat16``,
                ``fp16=True`` -> ``torch.float16``: :func:`training_autocast_dtype`), so the cached
                states are the ones training would compute; ``NCTrainer`` refuses a cache built
                with another. ``None``: no autocast.

        Raises:
            PrefixCacheError: If the cache would not be exact (see :func:`prefix_cache_problems`,
                :func:`dataset_problems`), or the dataset is empty.
        """
        backbone = resolve_backbone(model)
        block = first_tuned_block(model) if block is None else int(block)
        problems = prefix_cache_problems(model, block)
        if check_dataset and not problems:
            problems = dataset_problems(dataset, input_key)
        if problems:
            raise PrefixCacheError(
                "cannot cache the frozen prefix exactly: " + "; ".join(problems) + ". (Train without the cache "
                "to run the prefix live: e.g. drop --cache_frozen_prefix.)"
            )
        if len(dataset) == 0:
            raise PrefixCacheError("cannot build a prefix cache of an empty dataset")
        collate_fn = collate_fn or torch.utils.data.default_collate
        param = next(model.parameters())
        device = torch.device(device) if device is not None else param.device
        rank, world = _dist_rank_world()
        main = rank == 0

        n = len(dataset)
        per_rank = math.ceil(n / world)
        # Equal lengths (the short shards repeat their last index): every rank joins every all_gather.
        shards = [_shard_of(r, n, world, per_rank) for r in range(world)]
        shard = shards[rank]

        was_training = model.training
        model.eval()
        capture = _Capture(backbone, block)
        try:
            amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                   else contextlib.nullcontext())
            with _preserved_rng(), torch.no_grad(), amp, capture:
                probe = collate_fn([dataset[0]])
                hidden, ref = capture.run(model, _model_inputs(probe, input_key, label_key, device))
                layout = PrefixLayout(block=block, num_tokens=hidden.shape[1], hidden_size=hidden.shape[2],
                                      parts=1 if ref is None else 2, dtype=hidden.dtype,
                                      block_returns_tensor=capture.returns_tensor, prefix_weights=prefix_weights(model, block),
                                      autocast_dtype=autocast_dtype)
                nbytes = n * layout.row_bytes
                budget = _parse_bytes(memory_budget)
                in_ram = nbytes <= budget
                tmpdir, path = None, None
                if not in_ram:
                    if cache_dir is None:
                        tmpdir = cache_dir = tempfile.mkdtemp(prefix="hf_nc_prefix_cache_")
                    os.makedirs(cache_dir, exist_ok=True)
                    path = os.path.join(cache_dir, f"prefix_cache_rank{rank}_{os.getpid()}.npy")
                what = f"input of block {block}" if block < backbone.num_layers else "output of the last block"
                where = "in RAM" if in_ram else f"memory-mapped at {path} (over the {_human(budget)} RAM budget)"
                parts = " x 2 (+ the frozen block's output, SCL delta)" if ref is not None else ""
                message = (f"hf-nc prefix cache: {n} images x {layout.num_tokens} tokens x {layout.hidden_size}{parts} "
                           f"({str(layout.dtype).removeprefix('torch.')}) = {_human(nbytes)}, the {what}, {where}"
                           f"{f', computed in {world} shards' if world > 1 else ''}")
                logger.info(message)
                if progress and main:
                    print(message, flush=True)
                storage = _Storage(n, layout, in_ram, path)
                labels = torch.full((n,), -1, dtype=torch.long)
                has_labels = label_key in probe

                loader = DataLoader(torch.utils.data.Subset(dataset, shard), batch_size=batch_size, shuffle=False,
                                    collate_fn=collate_fn, num_workers=num_workers)
                from tqdm.auto import tqdm

                start = 0
                for batch in tqdm(loader, desc="caching frozen prefix", disable=not (progress and main), leave=False):
                    hidden, ref = capture.run(model, _model_inputs(batch, input_key, label_key, device))
                    rows = hidden if ref is None else torch.cat([hidden, ref.to(hidden.dtype)], dim=1)
                    y = batch[label_key].to(rows.device) if has_labels else torch.zeros(len(rows), dtype=torch.long, device=rows.device)
                    bsz = len(rows)
                    if world == 1:
                        index = torch.tensor(shard[start:start + bsz])
                        storage.write(index, rows)
                        labels[index] = y.cpu()
                    else:
                        for r, (rows_r, y_r) in enumerate(_all_gather(rows, y.long())):
                            index = torch.tensor(shards[r][start:start + bsz])
                            storage.write(index, rows_r)
                            labels[index] = y_r.cpu()
                    start += bsz
                storage.flush()
        finally:
            model.train(was_training)
        return cls(storage, labels if has_labels else None, layout, input_key, label_key, tmpdir)

    @classmethod
    def build_or_none(cls, *args, **kwargs) -> Optional["PrefixCache"]:
        """:meth:`build`, or ``None`` with a warning naming the reason where the cache would not be
        exact (augmentation, dropout in the prefix, an unfrozen prefix): then train uncached."""
        try:
            return cls.build(*args, **kwargs)
        except PrefixCacheError as err:
            warnings.warn(f"{err} Training without the prefix cache.", stacklevel=2)
            return None

    # -- running the model from the cache ---------------------------------------------------
    def attach(self, model: nn.Module) -> "PrefixCacheHandle":
        """Lets ``model`` run from rows of this cache (see the module docstring); images still work.

        Returns a handle: ``handle.remove()`` (or ``with cache.attach(model): ...``) restores the
        model. Attaching a second cache of the same layout reuses the handle.

        Raises:
            PrefixCacheError: If the model's first tuned block is not the cached one, or the model is
                already attached to a cache of another layout.
        """
        return PrefixCacheHandle.install(model, self.layout)


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shard_of(rank: int, n: int, world: int, per_rank: int) -> list[int]:
    shard = list(range(rank, n, world)) or [0]
    return shard + [shard[-1]] * (per_rank - len(shard))


def _all_gather(*tensors: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """Per rank, that rank's tensors (same shapes on every rank)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    on_cpu = dist.get_backend() == "gloo"
    gathered = []
    for t in tensors:
        t = t.contiguous().cpu() if on_cpu else t.contiguous()
        out = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(out, t)
        gathered.append(out)
    return zip(*gathered)
