"""Frozen-prefix cache: run the frozen blocks once per training image, train from the first tuned one.

In Layer FT, SCL FT, head FT and the linear probe every block below the first tuned block is
frozen (``hf_nc.adapters`` cut the graph there). Without training augmentation or dropout in the
prefix, that prefix computes the same hidden states for the same image in every epoch. A
:class:`PrefixCache` computes them once (``PrefixCache.build``), keeps them in RAM up to a budget
or in a memory-mapped file, and is itself a ``torch.utils.data.Dataset`` whose items are
``{"pixel_values": <cached hidden states>, "labels": <label>}`` in the dataset's order, so a
``transformers.Trainer`` trains on it unchanged::

    cache = PrefixCache.build(model, train_view, collate_fn, batch_size=64)
    cache.attach(model)                     # the model now also accepts cached states
    trainer = NCTrainer(model=model, train_dataset=cache, data_collator=collate_fn, ...)
    trainer.train()                         # same losses as with train_dataset=train_view
    model.save_pretrained(out)              # the normal adapter: the cache changes no weights

How the model runs from the cache: :meth:`PrefixCache.attach` replaces the ``forward`` of the stem
(the embeddings and the modules between them and the first block, from the backbone spec:
``Backbone.stem_paths``) and of the blocks below the first tuned block by pass-throughs. They
pass the input on only when the model is called with *cached* states, recognised by their shape
(a 3-D ``(batch, tokens, width)`` tensor in ``pixel_values`` instead of a 4-D image batch); image
batches (evaluation, the NC train subset) run the real modules. The embeddings receive the cached
tensor, hand it on, the frozen blocks hand it on, and the first tuned block sees exactly the
hidden states it would have computed. For SCL's default ``skip_source="delta"``, the frozen block
``l``'s own output ``h̄_l`` (frozen too) is cached beside its input (the cached tensor holds both,
concatenated along the tokens) and is returned by the frozen copy of block ``l``.

Exactness: the cached run equals the uncached run with the same seed up to float rounding (the
same hidden states enter the tuned block; the build consumes no random numbers of the training
run). :func:`prefix_cache_problems` lists what would break that and :meth:`PrefixCache.build`
refuses it: a trainable parameter in the prefix, dropout or stochastic depth in the prefix
(``hidden_dropout_prob``, ``attention_probs_dropout_prob``, ``drop_path_rate``, ... > 0: they are
active in train mode), or a dataset whose items differ between reads (training augmentation).

The cache does not make the blocks after the tuned one cheaper: they still run forward and
backward on every step. Tuning an early block therefore gains little (at block 2 of 12 the
prefix is ~10% of the step); at late blocks it removes most of the step.

Under ``torch.distributed`` each rank computes the rows of its own shard of the dataset
(indices ``rank::world_size``) and the shards are exchanged batch by batch (``all_gather``), so
every rank holds the whole cache: the Trainer's ``DistributedSampler`` draws any index on any
rank, in a different split every epoch. ``nn.DataParallel`` (several GPUs in one process) is not
supported: its replicas would call the original modules; launch one process per GPU instead.
Per-block NC (``LayerFeatures`` on blocks below the cut) needs those blocks to run: measure it on
images, not on cached rows.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import re
import shutil
import tempfile
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .backbones import Backbone, resolve_backbone

logger = logging.getLogger(__name__)

__all__ = [
    "PrefixCache",
    "PrefixCacheError",
    "PrefixCacheHandle",
    "PrefixLayout",
    "first_tuned_block",
    "prefix_cache_problems",
    "dataset_problems",
]

#: Default RAM budget of a cache; larger caches go to a memory-mapped file.
DEFAULT_MEMORY_BUDGET = 4 * 2**30

# Float attributes through which transformers modules apply dropout / stochastic depth
# functionally (e.g. ViTSelfAttention.dropout_prob, CLIPAttention.dropout, Dinov2DropPath.drop_prob).
_STOCHASTIC_ATTRS = ("p", "drop_prob", "dropout_prob", "dropout", "attention_dropout", "drop_path_rate", "drop_rate")


class PrefixCacheError(ValueError):
    """The frozen-prefix cache would not reproduce the uncached run (or is used on the wrong model)."""


class _StopForward(Exception):
    """Raised by the build's capture hook: nothing after the cut point needs to run."""


@dataclass(frozen=True)
class PrefixLayout:
    """What a cached row holds.

    Attributes:
        block: The first tuned block; the row holds its input. ``num_layers`` means "after the
            last block" (linear probe: the row holds the last block's output).
        num_tokens: Tokens per image ``T``.
        hidden_size: Width ``d``.
        parts: 1, or 2 when the frozen block ``block``'s own output is cached too (SCL delta).
        dtype: dtype of the cached hidden states.
        block_returns_tensor: Whether the blocks return a tensor (else a tuple led by one).
    """

    block: int
    num_tokens: int
    hidden_size: int
    parts: int
    dtype: torch.dtype
    block_returns_tensor: bool = True

    @property
    def row_shape(self) -> tuple[int, int]:
        return (self.parts * self.num_tokens, self.hidden_size)

    @property
    def row_bytes(self) -> int:
        return self.parts * self.num_tokens * self.hidden_size * torch.empty((), dtype=self.dtype).element_size()


# -- what the prefix is -------------------------------------------------------------------------


def _has_tuner_layer(module: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


def first_tuned_block(model: nn.Module) -> int:
    """Index of the lowest block with a trainable parameter or a PEFT tuner layer.

    Returns ``num_layers`` when every block is frozen (linear probe: only the head trains).
    """
    backbone = resolve_backbone(model)
    for i, block in enumerate(backbone.blocks):
        if any(p.requires_grad for p in block.parameters()) or _has_tuner_layer(block):
            return i
    return backbone.num_layers


def _scl_delta_source(block: nn.Module) -> bool:
    """Whether ``block`` is an SCL source whose active adapter runs the frozen block too (delta skip)."""
    from .adapters.scl import SCLSourceLayer

    if not isinstance(block, SCLSourceLayer):
        return False
    name = block._single_active()
    return name is not None and block._nc_skip_source.get(name) == "delta"


def _stem(backbone: Backbone) -> list[tuple[str, nn.Module]]:
    out = []
    for path in backbone.stem_paths:
        try:
            out.append((path, backbone.model.get_submodule(path)))
        except AttributeError as err:
            raise PrefixCacheError(
                f"the {backbone.spec.name!r} spec names {path!r} as part of the stem (embeddings / pre-block modules), "
                f"but {type(backbone.model).__name__} has no such module: fix BackboneSpec.embeddings / pre_blocks"
            ) from err
    return out


def _prefix_modules(backbone: Backbone, block: int) -> list[tuple[str, nn.Module]]:
    """The stem and blocks ``0..block-1``, as (path, module)."""
    return _stem(backbone) + [(backbone.block_path(i), backbone.blocks[i]) for i in range(block)]


def _stochastic(path: str, module: nn.Module) -> list[str]:
    found = []
    for name, m in module.named_modules():
        for attr in _STOCHASTIC_ATTRS:
            value = m.__dict__.get(attr)
            if isinstance(value, float) and not isinstance(value, bool) and value > 0:
                where = ".".join(p for p in (path, name) if p)
                found.append(f"{where}.{attr}={value:g}")
    return found


def prefix_cache_problems(model: nn.Module, block: Optional[int] = None) -> list[str]:
    """Why caching the prefix of ``model`` below ``block`` would not reproduce the uncached run.

    Args:
        model: The model to train (a ``PeftModel`` or a plain model with frozen blocks).
        block: The cut (the first tuned block); default :func:`first_tuned_block`.

    Returns:
        One sentence per problem; empty when the cache is exact.
    """
    backbone = resolve_backbone(model)
    first = first_tuned_block(model)
    block = first if block is None else block
    problems = []
    if not 0 <= block <= backbone.num_layers:
        return [f"block {block} is out of range 0..{backbone.num_layers} for this {backbone.num_layers}-block model"]
    prefix = _prefix_modules(backbone, block)
    trainable = [f"{path}.{n}" for path, m in prefix for n, p in m.named_parameters() if p.requires_grad]
    if trainable:
        more = f" (+{len(trainable) - 5} more)" if len(trainable) > 5 else ""
        problems.append(
            f"the prefix below block {block} is not frozen: {len(trainable)} parameters require grad, e.g. "
            f"{', '.join(trainable[:5])}{more}. A cache would freeze them: cache from the first trainable block "
            f"(block={min(first, block)}) or freeze them"
        )
    elif block > first:
        problems.append(f"block {block} is above the first tuned block {first}: that block would not train")
    stochastic = [s for path, m in prefix for s in _stochastic(path, m)]
    if block < backbone.num_layers and _scl_delta_source(backbone.blocks[block]):
        stochastic += _stochastic(f"{backbone.block_path(block)}.base_layer", backbone.blocks[block].base_layer)
    if stochastic:
        more = f" (+{len(stochastic) - 5} more)" if len(stochastic) > 5 else ""
        problems.append(
            "dropout or stochastic depth is active in the frozen prefix in train mode, so it does not compute the "
            f"same output every epoch: {', '.join(stochastic[:5])}{more}. Set those rates to 0 (e.g. "
            "config.hidden_dropout_prob / attention_probs_dropout_prob / attention_dropout / drop_path_rate) or train "
            "uncached"
        )
    return problems


def _transform_of(dataset) -> Any:
    fmt = getattr(dataset, "_format_kwargs", None) or {}
    return fmt.get("transform") or getattr(dataset, "transform", None)


def dataset_problems(dataset, input_key: str = "pixel_values", probes: int = 4) -> list[str]:
    """Why ``dataset``'s items would not be the same in every epoch (training augmentation).

    Checks an hf-nc transform's declared augmentations, then reads the first ``probes`` items twice
    and compares ``input_key`` (random number states are restored afterwards).
    """
    transform = _transform_of(dataset)
    augment = getattr(getattr(transform, "image_transform", None), "augment", None)
    if augment:
        return [
            f"the dataset's transform applies training augmentation ({', '.join(sorted(augment))}): a cache would "
            "freeze one random draw per image. Train uncached, or cache a view without augmentation"
        ]
    n = min(probes, len(dataset))
    with _preserved_rng():
        for i in range(n):
            a, b = dataset[i][input_key], dataset[i][input_key]
            if isinstance(a, torch.Tensor) and not torch.equal(a, b):
                return [
                    f"dataset item {i} differs between two reads (random augmentation in its transform?): a cache "
                    "would freeze one random draw per image. Train uncached, or cache a view without augmentation"
                ]
    return []


@contextmanager
def _preserved_rng():
    """Leaves torch (CPU and CUDA), Python and NumPy random states as they were."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


# -- storage ------------------------------------------------------------------------------------

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


# -- the cache ----------------------------------------------------------------------------------


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
                ``fp16=True`` -> ``torch.float16``), so the cached states are the ones training
                would compute. ``None``: no autocast.

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
                                      block_returns_tensor=capture.returns_tensor)
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


def _model_inputs(batch: dict, input_key: str, label_key: str, device: torch.device) -> dict:
    """The batch as the Trainer passes it to the model, without labels (no loss needed): e.g. a
    collator's ``interpolate_pos_encoding=True`` reaches the embeddings as in training."""
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items() if k != label_key}
    return {"pixel_values": inputs.pop(input_key), **inputs}


def _remove_files(tmpdir: Optional[str], path: Optional[str]) -> None:
    if tmpdir:
        shutil.rmtree(tmpdir, ignore_errors=True)
    elif path and os.path.exists(path):
        os.remove(path)


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


class _Capture:
    """Hooks that grab the hidden states at the cut during the build, then stop the forward."""

    def __init__(self, backbone: Backbone, block: int):
        self.backbone, self.block = backbone, block
        self.scl = block < backbone.num_layers and _scl_delta_source(backbone.blocks[block])
        self.returns_tensor = True
        self._handles: list = []
        self._got: Optional[tuple] = None
        self._inside = self._probed = False

    def __enter__(self):
        blocks, block = self.backbone.blocks, self.block
        if block < len(blocks):
            self._handles.append(blocks[block].register_forward_pre_hook(self._pre, with_kwargs=True))
        else:
            self._handles.append(blocks[-1].register_forward_hook(self._post))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre(self, module, args, kwargs):
        if self._inside:  # the format probe below re-enters this hook (head FT: the block is its own frozen part)
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        ref = None
        if self.scl or not self._probed:
            # The frozen block on the same input: SCL's h̄_l, and (once) the blocks' output format.
            self._inside = True
            try:
                out = getattr(module, "base_layer", module)(*args, **kwargs)
            finally:
                self._inside = False
            self.returns_tensor, self._probed = isinstance(out, torch.Tensor), True
            ref = (out if self.returns_tensor else out[0]) if self.scl else None
        self._got = (hidden, ref)
        raise _StopForward

    def _post(self, module, args, output):
        self.returns_tensor = isinstance(output, torch.Tensor)
        self._got = (output if self.returns_tensor else output[0], None)
        raise _StopForward

    def run(self, model: nn.Module, inputs: dict) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        self._got = None
        try:
            model(**inputs)
        except _StopForward:
            pass
        if self._got is None:
            raise PrefixCacheError(f"the forward pass never reached block {self.block}: cannot cache its input")
        return self._got


# -- the pass-through patches -----------------------------------------------------------------


class _State:
    def __init__(self):
        self.on = False
        self.ref: Optional[torch.Tensor] = None


class PrefixCacheHandle:
    """The patches that let a model run from cached prefix states (:meth:`PrefixCache.attach`)."""

    _ATTR = "_hf_nc_prefix_cache_handle"

    def __init__(self, model: nn.Module, layout: PrefixLayout):
        self.layout = layout
        self.backbone = backbone = resolve_backbone(model)
        self._model = backbone.model
        self._state = _State()
        self._patched: list[tuple[nn.Module, Any]] = []
        self._hooks: list = []
        stem = _stem(backbone)
        rows = layout.parts * layout.num_tokens

        state = self._state

        def is_cached(x) -> bool:
            if not isinstance(x, torch.Tensor) or x.dim() != 3:
                return False
            if tuple(x.shape[1:]) != (rows, layout.hidden_size):
                raise PrefixCacheError(
                    f"got 3-D pixel_values of shape {tuple(x.shape)}, but this model's prefix cache holds rows of "
                    f"shape {(rows, layout.hidden_size)}: pass images (B, C, H, W) or rows of this cache"
                )
            return True

        def embeddings_forward(original):
            def forward(x=None, *args, **kwargs):
                if x is None:
                    x = kwargs.pop("pixel_values", None)
                if is_cached(x):
                    state.on = True
                    if layout.parts == 2:
                        state.ref = x[:, layout.num_tokens:]
                        return x[:, :layout.num_tokens]
                    return x
                state.on, state.ref = False, None
                return original(x, *args, **kwargs)
            return forward

        def pass_through(original, as_block: bool):
            def forward(*args, **kwargs):
                if not state.on:
                    return original(*args, **kwargs)
                hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))
                if as_block and not layout.block_returns_tensor:
                    return (hidden,)
                return hidden
            return forward

        def frozen_ref(original):
            def forward(*args, **kwargs):
                if not state.on:
                    return original(*args, **kwargs)
                return state.ref if layout.block_returns_tensor else (state.ref,)
            return forward

        emb = stem[0][1]
        self._patch(emb, embeddings_forward(emb.forward))
        for _, module in stem[1:]:
            self._patch(module, pass_through(module.forward, as_block=False))
        for i in range(layout.block):
            self._patch(backbone.blocks[i], pass_through(backbone.blocks[i].forward, as_block=True))
        if layout.parts == 2:
            base = backbone.blocks[layout.block].base_layer
            self._patch(base, frozen_ref(base.forward))

        def reset(*_):
            state.on, state.ref = False, None

        self._hooks.append(self._model.register_forward_hook(reset, always_call=True))

    def _patch(self, module: nn.Module, forward: Callable) -> None:
        self._patched.append((module, module.__dict__.get("forward")))
        module.forward = forward

    @classmethod
    def install(cls, model: nn.Module, layout: PrefixLayout) -> "PrefixCacheHandle":
        backbone = resolve_backbone(model)
        existing = backbone.model.__dict__.get(cls._ATTR)
        if existing is not None:
            if existing.layout != layout:
                raise PrefixCacheError(
                    f"this model is already attached to a prefix cache of another layout ({existing.layout}); "
                    "remove() that handle first"
                )
            return existing
        block = first_tuned_block(model)
        if block != layout.block:
            raise PrefixCacheError(
                f"the cache holds the input of block {layout.block}, but this model's first tuned block is {block}: "
                "build the cache on the model you train (after applying the adapter)"
            )
        scl = block < backbone.num_layers and _scl_delta_source(backbone.blocks[block])
        if scl != (layout.parts == 2):
            raise PrefixCacheError(
                "the cache was built for " + ("an SCL delta skip" if layout.parts == 2 else "a model without an SCL "
                "delta skip") + " at this block, but the model " + ("has none" if layout.parts == 2 else "has one")
            )
        if layout.hidden_size != backbone.hidden_size:
            raise PrefixCacheError(f"the cache's width {layout.hidden_size} is not the model's {backbone.hidden_size}")
        handle = cls(model, layout)
        backbone.model.__dict__[cls._ATTR] = handle
        return handle

    def remove(self) -> None:
        """Restores the real forwards; the model runs only from images again."""
        for module, previous in reversed(self._patched):
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
        self._patched.clear()
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        if self._model.__dict__.get(self._ATTR) is self:
            del self._model.__dict__[self._ATTR]

    def __enter__(self) -> "PrefixCacheHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
