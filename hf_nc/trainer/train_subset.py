"""NC of a fixed, seeded, stratified subset of the training data, measured at evaluations.

:class:`TrainSubsetNC` is ``NCTrainer``'s train-subset machinery: it draws the subset once (every
class present, the same on every rank), splits it into disjoint per-rank shards, keeps small
collated batches in memory between evaluations, and runs the extra forward pass (NC, then the NCC
pass) in eval mode, stopped at the classifier's input. When the blocks below the first tuned one are
frozen it measures later evaluations from that block on: from the rows the first pass grabbed
(:mod:`hf_nc.trainer.subset_rows`), or, when those were over the memory budget, from a
memory-mapped :class:`~hf_nc.prefix_cache.PrefixCache`. ``nc_train_every`` decides which
evaluations measure it, and a result is reused while the weights cannot have changed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..backbones import Backbone, resolve_backbone
from ..data import stratified_indices
from ..features import FINAL, LayerFeatures
from ..layer_nc import unpack_batch
from ..metrics.validation import check_within_class
from .collect import LayerStats
from .labels import check_labels, dataset_labels
from .subset_rows import ClassifierStop, RowCapture, StopAtClassifier, SubsetRows

if TYPE_CHECKING:
    from .trainer import NCTrainer

logger = logging.getLogger(__name__)


def assign_checked(obj: Any, attr: str, value: Any, check: Callable[[], None]) -> None:
    """Sets ``obj.<attr> = value`` and runs ``check()``; if it refuses the value (``ValueError``), the old
    value comes back and ``check()`` runs again (it redraws or re-caches what the old value had) before
    the error is raised: a refused setting used to stay set, with nothing drawn for it."""
    old = getattr(obj, attr, None)
    setattr(obj, attr, value)
    try:
        check()
    except ValueError:
        setattr(obj, attr, old)
        check()
        raise


def _check_samples(samples: Any) -> None:
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, (int, np.integer))):
        raise ValueError(f"nc_train_samples must be an int or None, got {samples!r}")


def _check_every(every: Any) -> None:
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f"nc_train_every must be a positive int (1: measure the train subset at every evaluation), "
                         f"got {every!r}")


class TrainSubsetNC:
    """The train subset of one ``NCTrainer``: which images, their cached batches or rows, and its NC.

    The trainer's ``model``, ``args``, ``state``, ``accelerator`` and ``data_collator`` are read at
    every call rather than copied, since they change after the trainer is built (Accelerate wraps
    the model, the step moves on, a user may swap the model between ``evaluate()`` calls); so are
    the settings shared with the eval-data NC (``nc_num_classes``, ``nc_layers``, ``nc_ncc``). The
    images come from ``trainer.get_nc_train_dataloader()`` and the shard from
    ``trainer.nc_train_shard()``, the trainer's methods a subclass may override.

    Args:
        trainer: The trainer it measures for.
        dataset: ``nc_train_dataset`` (map-style), or ``None``: no train-subset NC.
        samples: ``nc_train_samples`` (see :class:`~hf_nc.trainer.NCTrainer`).
        cache_mb: ``nc_cache_mb``: this rank's collated batches, and the grabbed rows, are kept in
            memory up to this many MiB.
        prefix_cache: ``nc_prefix_cache``: measure from the first tuned block when that is exact.
        every: ``nc_train_every``: measure at every ``every``-th evaluation during training.

    Raises:
        ValueError: ``samples`` not an int or ``None``, or ``every`` not a positive int.
    """

    def __init__(self, trainer: "NCTrainer", dataset: Optional[Dataset], samples: Optional[int], cache_mb: float,
                 prefix_cache: bool, every: int):
        _check_samples(samples)
        _check_every(every)
        self.trainer = trainer
        self._dataset = dataset
        self._samples = samples
        self._cache_mb = cache_mb
        self._budget_mb = cache_mb  # cache_mb drops to 0 when the images do not fit; the rows keep it
        self.prefix_cache = prefix_cache
        self._every = int(every)
        #: ``evaluate()`` calls outside nested ones (a dict of eval sets recurses), counted by the trainer
        self.evaluate_calls = 0
        self.train_calls = 0  # NCTrainer.train() calls (the fingerprint names the run)
        self._eval_steps: list[int] = []  # global steps of the evaluations during training, in order
        self._indices: list[int] = []
        self._batches: Optional[list] = None  # this rank's collated batches, when they fit in cache_mb
        #: the train subset's rows at the cut: :class:`SubsetRows`, or a :class:`~hf_nc.prefix_cache.PrefixCache`
        self.prefix: Optional[Any] = None
        self._rows_failed = False  # the rows were over the budget: PrefixCache.build at the next evaluation
        self._prefix_off = False  # not exact / no gain for this model: never try again
        self._frozen_blocks: dict[str, float] = {}  # per-block NC1 below the cut, measured once
        self._rows_model: Optional[weakref.ref] = None  # the model the cached rows were computed with
        self._cached: Optional[tuple] = None  # (fingerprint of the weights, metrics)

    # ------------------------------------------------------------------ the subset
    @property
    def dataset(self) -> Optional[Dataset]:
        """``nc_train_dataset``; setting it after the trainer is built redraws the subset from it."""
        return self._dataset

    @dataset.setter
    def dataset(self, value: Optional[Dataset]) -> None:
        assign_checked(self, "_dataset", value, self._redraw)

    @property
    def samples(self) -> Optional[int]:
        """``nc_train_samples``; setting it after the trainer is built redraws the subset."""
        return self._samples

    @samples.setter
    def samples(self, value: Optional[int]) -> None:
        _check_samples(value)
        assign_checked(self, "_samples", value, self._redraw)

    def settings_changed(self) -> None:
        """The trainer's ``nc_layers`` / ``nc_num_classes`` / ``nc_eval`` / ``nc_ncc`` changed: the result
        and the frozen blocks' NC1 were measured with the old ones (removed blocks kept being reported),
        and K stratifies the subset; everything is checked and drawn again, as at construction."""
        self._redraw()

    @property
    def every(self) -> int:
        """``nc_train_every``."""
        return self._every

    @every.setter
    def every(self, value: int) -> None:
        """Checked as at construction: 0 used to be accepted and fail at the first evaluation in training
        (a modulo by zero), a value above 1 to skip a train-subset ``metric_for_best_model``'s value."""
        _check_every(value)
        assign_checked(self, "_every", int(value), self._check_best_metric)

    def _check_best_metric(self) -> None:
        if getattr(self.trainer, "_nc_built", False):  # else __init__ checks once every setting is in
            self.trainer._nc_check_best_metric()

    @property
    def cache_mb(self) -> float:
        """``nc_cache_mb`` in effect: the budget as set, or 0 once the images did not fit in it."""
        return self._cache_mb

    @cache_mb.setter
    def cache_mb(self, value: float) -> None:
        """A new budget for the batches and the rows: it used to change only the batches' share, kept the
        batches and rows cached under the old one, and a later redraw put the old value back."""
        self._cache_mb = self._budget_mb = value
        self._batches = None  # cached again at the next pass if they fit in the new budget
        self._drop_prefix()  # the rows too (in RAM within the budget, else a PrefixCache)
        self._cached = None

    def _redraw(self) -> None:
        """A new dataset or size: the subset, its cached batches, rows and result belonged to the old one
        (they used to be reused silently); the new subset is checked and drawn as at construction."""
        if getattr(self.trainer, "nc_train_subset", None) is not self or not getattr(self.trainer, "_nc_built", False):
            return  # the trainer is still being built: its set-up draws the subset
        self._indices, self._batches, self._cached = [], None, None
        self._drop_prefix()
        self._prefix_off, self._cache_mb = False, self._budget_mb
        self.trainer._nc_check_setup()  # the construction-time checks and draw (K resolved there if it never was)

    @property
    def enabled(self) -> bool:
        """Whether the train subset is measured (``nc_train_samples != 0`` and there is data)."""
        return self.dataset is not None and self.samples != 0

    @property
    def backbone(self) -> Backbone:
        return resolve_backbone(self.trainer.model)

    def setup(self, num_classes: int, seed: int) -> None:
        """Checks the data against ``num_classes`` and draws the subset (a no-op when not :attr:`enabled`).

        Args:
            num_classes: K (the trainer's resolved ``nc_num_classes``).
            seed: The seed of the stratified draw (``args.seed``: every rank draws the same subset).

        Raises:
            ValueError: not a map-style dataset, labels outside ``0..K - 1``, a class without images,
                ``0 < nc_train_samples < K``, or a single image in every class
                (NC1 would be 0 by construction).
        """
        if not self.enabled:
            return
        if not hasattr(self.dataset, "__len__") or not hasattr(self.dataset, "__getitem__"):
            raise ValueError("nc_train_dataset must be a map-style dataset (len() and indexing) to draw the train "
                             "subset from; pass one (e.g. the training data with evaluation transforms), or "
                             "nc_train_samples=0 to switch train-subset NC off")
        self._warn_if_augmented()
        K = num_classes
        labels = dataset_labels(self.dataset, read_items=True)
        check_labels(labels, K, "nc_train_dataset")
        missing = sorted(set(range(K)) - {int(v) for v in np.unique(labels)})
        if missing:
            raise ValueError(f"nc_train_dataset has no images of class(es) {missing[:10]} of nc_num_classes={K}: "
                             "train-subset NC needs every class (fix nc_num_classes, or pass nc_train_samples=0 to "
                             "switch train-subset NC off)")
        n = self.samples
        if n is None or n < 0 or n >= len(labels):
            indices = list(range(len(labels)))
        elif n < K:
            raise ValueError(f"nc_train_samples={n} cannot hold one image of each of the {K} classes: use "
                             f"nc_train_samples >= {K}, None (all images) or 0 (no train-subset NC)")
        else:
            indices = stratified_indices(labels, n, seed=seed, num_classes=K).tolist()
        try:  # checked here, before training, not at the first evaluation
            check_within_class(np.bincount(np.asarray(labels)[indices], minlength=K))
        except ValueError as e:
            raise ValueError(f"the train subset ({len(indices)} images of nc_train_dataset): {e}; or pass "
                             "nc_train_samples=0 to switch train-subset NC off") from e
        self._indices = indices

    def _warn_if_augmented(self) -> None:
        """Train-subset NC of augmented images (``train_dataset`` by default) measures one random draw
        per image, kept by the batch cache for every later evaluation: not the training data's NC."""
        from ..prefix_cache.checks import _random_parts, _transform_of

        data = self.dataset
        while isinstance(data, Subset):
            data = data.dataset
        found = _random_parts(_transform_of(data))
        if found:
            warnings.warn(f"the train-subset NC data (nc_train_dataset, default train_dataset) applies random augmentation "
                          f"({', '.join(sorted(set(found)))}): its NC would be measured on one random draw per image. Pass "
                          "nc_train_dataset=<the training data with evaluation transforms>", UserWarning, stacklevel=4)

    def indices(self) -> list[int]:
        """The seeded, stratified subset of the dataset (all ranks agree); empty when switched off."""
        return list(self._indices)

    def shard(self) -> list[int]:
        """This rank's share of :meth:`indices`: disjoint across ranks, nothing repeated (possibly
        empty when the subset is smaller than the world size)."""
        args = self.trainer.args
        return self._indices[args.process_index :: args.world_size]

    def dataloader(self) -> DataLoader:
        """This rank's shard of the train subset (``trainer.nc_train_shard()``), with the trainer's collator."""
        args = self.trainer.args
        return DataLoader(
            Subset(self.dataset, self.trainer.nc_train_shard()),
            batch_size=args.per_device_eval_batch_size,
            collate_fn=self.trainer.data_collator,
            num_workers=args.dataloader_num_workers,
        )

    def _batches_or_loader(self):
        """The cached train-subset batches, else the loader (cached on first use if small enough)."""
        if self._batches is not None:
            return self._batches
        loader = self.trainer.get_nc_train_dataloader()
        if self.cache_mb <= 0:
            return loader
        batches, size = [], 0
        for batch in loader:
            size += sum(v.numel() * v.element_size() for v in batch.values() if isinstance(v, torch.Tensor)) if isinstance(batch, dict) else 0
            if not isinstance(batch, dict) or size > self.cache_mb * 2**20:
                self._cache_mb = 0  # too large (or not a dict batch): stream from now on
                return loader
            batches.append(batch)
        self._batches = batches
        return batches

    # ------------------------------------------------------------------ when to measure
    def due(self) -> bool:
        """Whether this evaluation measures the train subset (``nc_train_every``)."""
        trainer = self.trainer
        if self.every == 1 or not trainer.is_in_train:
            return True
        step = trainer.state.global_step
        if trainer.state.max_steps and step >= trainer.state.max_steps:
            return True  # the last evaluation of training
        if step not in self._eval_steps:  # a dict of eval sets evaluates several times per step
            self._eval_steps.append(step)
        return self._eval_steps.index(step) % self.every == 0

    def fingerprint(self) -> tuple:
        """Names the weights the train subset is measured with: during training the global step
        (weights change only at optimizer steps), outside it one ``evaluate()`` call (the user may
        change the model between calls). Tensor version counters cannot serve: fused optimizers
        (transformers' default ``adamw_torch_fused``) update parameters without bumping them."""
        trainer = self.trainer
        if trainer.is_in_train:  # global_step restarts at 0 in every train() call: the call is named too
            return ("step", id(trainer.model), self.train_calls, trainer.state.global_step)
        return ("call", id(trainer.model), self.evaluate_calls)

    # ------------------------------------------------------------------ passes
    @torch.no_grad()
    def _stream(self, stats: LayerStats, recorder: LayerFeatures, batches, ncc: bool,
                capture: Optional[RowCapture] = None) -> None:
        trainer = self.trainer
        model = trainer.model
        device = next(model.parameters()).device
        # NC needs the classifier's input, not its logits: the forward stops there (no head, no loss).
        # Not under FSDP / DeepSpeed: their hooks re-shard parameters after a forward that completes.
        sharded = getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False)
        stop = ClassifierStop(recorder.backbone) if FINAL in recorder.keys and not sharded else contextlib.nullcontext()
        with stop:
            for batch in batches:
                pixel_values, labels = unpack_batch(batch)
                # the collator's other model inputs (e.g. interpolate_pos_encoding), as the Trainer passes them
                extra = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()
                         if k not in ("pixel_values", "labels")} if isinstance(batch, Mapping) else {}
                try:
                    model(pixel_values=pixel_values.to(device), **extra)
                except StopAtClassifier:
                    pass
                feats = recorder.pop()
                if capture is not None:
                    capture.take(labels)
                if ncc:
                    stats.ncc_pass(feats, labels)
                else:
                    stats.update(feats, labels)

    def _pass(self, layers, batches, capture: Optional[RowCapture] = None) -> LayerStats:
        """One streamed pass (plus the NCC pass) over ``batches``, reduced across processes.

        With ``capture`` the pass (over images) also grabs the rows at the cut; when it got them they
        become the train subset's prefix cache, and the NCC pass already runs from them.
        """
        trainer = self.trainer
        with LayerFeatures(trainer.model, layers=layers) as recorder:
            stats = LayerStats(trainer.nc_num_classes, recorder.keys)
            with capture if capture is not None else contextlib.nullcontext():
                self._stream(stats, recorder, batches, ncc=False, capture=capture)
            stats.reduce()
        attach = False  # the NCC pass runs from the rows just grabbed (a cached pass is attached already)
        if capture is not None:
            rows = capture.result()
            if rows is None:
                self._rows_failed = True  # over the budget: PrefixCache.build (memory-mapped) next time
            else:
                self.prefix, self._batches = rows, None  # the images are not needed any more
                batches, attach = rows.batches, True
        if trainer.nc_ncc and not stats.nonfinite.get(FINAL):  # agreed on every rank by reduce()
            with LayerFeatures(trainer.model, layers=[]) as recorder:  # NCC: the final features only
                with self._attached() if attach else contextlib.nullcontext():
                    self._stream(stats, recorder, batches, ncc=True)
            stats.second_reduce()
        return stats

    def _layer_list(self) -> list[int]:
        layers = self.trainer.nc_layers
        backbone = self.backbone
        if layers == "all":
            return list(range(backbone.num_layers))
        return sorted({backbone.layer_index(i) for i in layers})

    # ------------------------------------------------------------------ frozen-prefix rows
    def _budget_bytes(self) -> int:
        return int(max(self._budget_mb, 0) * 2**20)

    def _prefix_cut(self) -> Optional[int]:
        """The first tuned block when a train-subset prefix cache would be exact and gain something."""
        if self._prefix_off or not self.prefix_cache or self.trainer.args.world_size > 1:
            return None
        from ..prefix_cache import PrefixCache, first_tuned_block, prefix_cache_problems

        data = self.dataset
        while isinstance(data, Subset):
            data = data.dataset
        if isinstance(data, PrefixCache):  # its items already are cached prefix states
            self._prefix_off = True
            return None

        model = self.trainer.model
        try:
            cut = first_tuned_block(model)
            ok = 0 < cut and not prefix_cache_problems(model, cut)
        except Exception as e:  # noqa: BLE001 - any model the cache does not know runs uncached
            logger.debug("no prefix cache for the train subset: %s", e)
            ok = False
        if not ok:
            self._drop_prefix()
            self._prefix_off = True
            return None
        # rows (and frozen-block NC) belong to the model they were computed with: a model swapped in
        # between evaluate() calls with the same cut has other frozen weights
        if self._rows_model is None or self._rows_model() is not model or (self.prefix is not None and self.prefix.layout.block != cut):
            self._drop_prefix()
            self._rows_model = weakref.ref(model)
        return cut

    def _drop_prefix(self) -> None:
        if self.prefix is not None:
            self.prefix.close()
        self.prefix, self._frozen_blocks, self._rows_failed = None, {}, False

    @contextlib.contextmanager
    def _attached(self):
        """The model runs from the train subset's cached rows inside (images still work)."""
        from ..prefix_cache import PrefixCacheHandle

        model = self.trainer.model
        attached = resolve_backbone(model).model.__dict__.get(PrefixCacheHandle._ATTR)
        handle = PrefixCacheHandle.install(model, self.prefix.layout)
        try:
            yield
        finally:
            if attached is None:  # leave a handle the user attached for training alone
                handle.remove()

    def _row_batches(self, cut: int):
        """Batches of cached prefix states of the train subset: the rows grabbed by the first pass, or
        (when they were over ``nc_cache_mb``) a :class:`~hf_nc.prefix_cache.PrefixCache` built now,
        memory-mapped; ``None`` when that cannot be built."""
        from ..prefix_cache import PrefixCache, PrefixCacheError, training_autocast_dtype

        trainer = self.trainer
        args = trainer.args
        if isinstance(self.prefix, SubsetRows):
            return self.prefix.batches
        if self.prefix is None:
            try:
                self.prefix = PrefixCache.build(
                    trainer.model, Subset(self.dataset, trainer.nc_train_shard()), trainer.data_collator,
                    batch_size=args.per_device_eval_batch_size, block=cut, progress=False, check_dataset=False,
                    memory_budget=self._budget_bytes(), autocast_dtype=training_autocast_dtype(args))
            except PrefixCacheError as e:
                logger.info("train-subset NC without a prefix cache: %s", e)
                self._prefix_off = True
                return None
        cache = self.prefix

        def collate(items):
            return {"pixel_values": torch.stack([i["pixel_values"] for i in items]),
                    "labels": torch.tensor([int(i["labels"]) for i in items])}

        return DataLoader(cache, batch_size=args.per_device_eval_batch_size, collate_fn=collate)

    # ------------------------------------------------------------------ the metrics
    def metrics(self) -> dict:
        """NC of the train subset (an extra forward pass in eval mode), reduced across processes.

        Collective under torch.distributed: every rank calls it (a rank with an empty shard too).
        The result is reused while the weights cannot have changed (see :meth:`fingerprint`): at the
        same training step, and within one ``evaluate()`` of a dict ``eval_dataset``. With
        ``prefix_cache`` the frozen prefix runs once (see the module docstring).

        Returns:
            The nested metrics (``nc1``, ..., ``blocks``) as :meth:`LayerStats.metrics` gives them;
            ``{}`` when not :attr:`enabled`.
        """
        if not self.enabled:
            return {}
        fingerprint = self.fingerprint()
        if self._cached is not None and self._cached[0] == fingerprint:
            return self._cached[1]
        from ..prefix_cache import PrefixCacheError

        trainer = self.trainer
        model = trainer.model
        was_training = model.training
        model.eval()
        from_rows = False
        try:
            with trainer.accelerator.autocast():
                cut = self._prefix_cut()
                layers = self._layer_list()
                frozen = [i for i in layers if cut is not None and i < cut]
                if cut is not None and self.prefix is None and not self._rows_failed:
                    # The first pass with this cut: over the images, every block measured, rows grabbed
                    capture = RowCapture(self.backbone, cut, self._budget_bytes())
                    stats = self._pass(layers, self._batches_or_loader(), capture=capture)
                else:
                    # A frozen block's NC1 that came out NaN is measured again, on images
                    batches = self._row_batches(cut) if cut is not None and not (frozen and not self._frozen_blocks) else None
                    stats = None
                    if batches is not None:
                        try:
                            with self._attached():
                                stats = self._pass([i for i in layers if i >= cut], batches)
                            from_rows = True
                        except PrefixCacheError as e:  # e.g. the user attached a cache of another layout
                            logger.info("train-subset NC without a prefix cache: %s", e)
                            self._drop_prefix()
                            self._prefix_off = True
                    if stats is None:
                        stats = self._pass(layers, self._batches_or_loader())
        finally:
            model.train(was_training)
        metrics = stats.metrics(self.backbone.classifier, "the train subset", ncc=trainer.nc_ncc)
        if from_rows and self._frozen_blocks:
            metrics["blocks"] = dict(sorted({**self._frozen_blocks, **metrics.get("blocks", {})}.items(),
                                            key=lambda kv: int(kv[0])))
        elif not from_rows and cut is not None and not self._prefix_off and "blocks" in metrics:
            frozen_nc1 = {k: v for k, v in metrics["blocks"].items() if int(k) < cut}
            if all(math.isfinite(v) for v in frozen_nc1.values()):  # else measure them again next time
                self._frozen_blocks = frozen_nc1
        self._cached = (self.fingerprint(), metrics)
        return metrics
