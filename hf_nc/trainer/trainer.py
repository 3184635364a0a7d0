"""NCTrainer: a ``transformers.Trainer`` that also reports neural collapse at every evaluation.

The model-card hooks are :class:`~hf_nc.trainer.card.NCModelCardMixin`, the label reading
:mod:`hf_nc.trainer.labels`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import os
from typing import Any, Iterable, Literal, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from ..backbones import resolve_backbone
from ..data import stratified_indices
from ..features import FINAL, LayerFeatures
from ..layer_nc import unpack_batch
from ..metrics.validation import check_num_classes
from .collect import (
    LEGACY_TRAIN_PREFIX,
    TRAIN_SUBSET_PREFIX,
    LayerStats,
    canonical_metric_name,
    flatten,
    metric_direction,
)
from .card import NCModelCardMixin
from .history import plot_history, restore_history, save_history, upsert
from .labels import check_labels, dataset_labels
from .labels import check_labels as _check_labels  # noqa: F401 - the name code imported from here before labels.py
from .subset_rows import ClassifierStop, RowCapture, StopAtClassifier, SubsetRows

logger = logging.getLogger(__name__)

NCLayers = Union[bool, Literal["all"], Iterable[int]]


class _NCHistoryCallback(TrainerCallback):
    """Copies the NC history into every checkpoint and draws the plots when training ends."""

    def __init__(self, trainer: "NCTrainer"):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                save_history(self.trainer.nc_history, folder)

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.plot_nc_history()


class NCTrainer(NCModelCardMixin, Trainer):
    """A drop-in :class:`transformers.Trainer` that also measures neural collapse (NC).

    At every evaluation it computes the NC metrics (``nc1``, ``nc2_etf``, ``nc2_equinorm``,
    ``nc2_equiangle``, ``nc3`` for a linear classifier, ``cdnv``; ``ncc_acc`` with ``nc_ncc``)
    of the features that enter the classifier (the backbone spec's classifier input, also under
    PEFT wrapping), on

    * the evaluation data: collected by hooks during the Trainer's own evaluation loop (no
      extra forward pass), logged as ``eval_nc1``, ... (``test_nc1`` for ``predict``);
    * a fixed, seeded, stratified subset of the training data (``nc_train_samples`` images of
      ``nc_train_dataset``, which should be the training data *without* augmentation, every class
      present): one extra forward pass, logged as ``eval_train_subset_nc1``, ...
      (:data:`~hf_nc.trainer.TRAIN_SUBSET_PREFIX`; the name keeps transformers' auto model
      card and the TensorBoard / W&B callbacks apart from eval NC: "Train Subset Nc1",
      ``eval/train_subset_nc1``). ``evaluate()`` also returns them under the short names of
      earlier releases (``train_nc1``, ...), which are not logged;

    and, with ``nc_layers``, NC1 of every block's pooled output (``eval_nc1_block3``,
    ``eval_train_subset_nc1_block3``, ...). The metrics go through ``Trainer.log`` (console,
    TensorBoard, W&B, ...) and are returned by ``evaluate()``. Statistics are streamed per batch
    (:class:`~hf_nc.metrics.NCStats`) and summed across processes; features are never gathered.
    Under DDP each sample counts once: the duplicates Accelerate pads the last evaluation batch
    with are dropped, and the train subset is split into disjoint per-rank shards without
    padding (a rank whose shard is empty contributes zeros).

    Undefined NC never stops training: non-finite features (a diverged model) or a class
    without samples in the evaluation data log every NC metric as NaN, with a warning that
    says why. The model (a supported backbone), ``nc_layers``, ``nc_num_classes`` against the
    labels of the data and ``nc_train_samples`` are checked when the trainer is built.

    ``metric_for_best_model`` may name an NC metric, e.g. ``"eval_train_subset_nc1"`` (or
    ``"train_subset_nc1"``, or the legacy alias ``"train_nc1"``, rewritten to it) or
    ``"eval_nc1"``: ``greater_is_better`` is then set from the metric (lower is better, except
    ``ncc_acc``).

    The history of all evaluations is kept in ``output_dir/nc_history.json`` and in every
    checkpoint (``resume_from_checkpoint`` restores it, up to the resumed step); when training
    ends (and after an ``evaluate()`` outside training) ``nc1_history.png`` (train and eval NC1
    against steps, log scale) and ``nc1_per_layer.png`` (last per-block curve) are drawn there.
    ``push_to_hub()`` / ``create_model_card()`` write the hf-nc card of a PEFT adapter
    (:mod:`hf_nc.cards`: base model, method, trainable share, accuracy and NC as model-index,
    the ``import hf_nc`` loading snippet) instead of PEFT's blank template.

    Args:
        nc_train_dataset: Training data for the train-subset NC (default: ``train_dataset``;
            pass the same data with evaluation transforms when training uses augmentation).
        nc_train_samples: Size of the seeded (``args.seed``), stratified subset: every class gets
            ``n // K`` or one more images (fewer only where a class has fewer). ``None`` or a
            negative number: all of ``nc_train_dataset``; ``0``: no train-subset NC. A positive
            value must be at least K.
        nc_eval: Also measure NC on the evaluation data.
        nc_layers: ``False``, ``True``/``"all"`` (every block) or block indices, for per-block NC1.
        nc_ncc: Also compute the train subset's ``ncc_acc`` (a second forward pass over it).
        nc_num_classes: K; default: the ClassLabel of the dataset, else ``config.num_labels``.
        nc_plots: Draw the PNG plots.
        nc_cache_mb: Keep this rank's collated train-subset batches in memory (CPU) when they fit
            in this many MiB, so later evaluations skip loading and transforming them again (and the
            rows of ``nc_prefix_cache``, within the same budget).
        nc_prefix_cache: For Layer FT / SCL FT / head FT / a linear probe (every block below the
            first tuned one frozen), run that frozen prefix over the train subset once and measure
            later evaluations from the first tuned block on. The first evaluation's full pass over
            the images measures every block and keeps the hidden states entering the first tuned
            block (in RAM, up to ``nc_cache_mb``; over it a memory-mapped
            :class:`hf_nc.prefix_cache.PrefixCache` is built at the next evaluation); per-block NC1 of
            the frozen blocks is measured that once (it cannot change). Exact (the same hidden states
            enter the tuned block); used on one process only, and only where
            :func:`~hf_nc.prefix_cache.prefix_cache_problems` finds nothing (else the full pass runs,
            silently). Every train-subset pass stops at the classifier's input (no logits, no loss).
        nc_train_every: Measure the train subset at every ``k``-th evaluation during training (the
            1st, ``k+1``-th, ...) and at the last one; the others log eval-data NC only. Every
            ``evaluate()`` outside training measures it. ``1`` (default): at every evaluation. An
            opt-in saving where the train-subset pass is a large share of the evaluation; refused
            with a train-subset ``metric_for_best_model`` (it needs the value at every evaluation).
        Everything else goes to :class:`transformers.Trainer`.

    Raises:
        ValueError: an unsupported model, a bad ``nc_layers``, labels outside
            ``0..nc_num_classes - 1``, a class of ``nc_num_classes`` absent from
            ``nc_train_dataset``, ``0 < nc_train_samples < K``, or ``nc_train_every`` not a
            positive int (or above 1 with a train-subset ``metric_for_best_model``).
    """

    def __init__(
        self,
        *args,
        nc_train_dataset: Optional[Dataset] = None,
        nc_train_samples: Optional[int] = 512,
        nc_eval: bool = True,
        nc_layers: NCLayers = False,
        nc_ncc: bool = False,
        nc_num_classes: Optional[int] = None,
        nc_plots: bool = True,
        nc_cache_mb: float = 256,
        nc_prefix_cache: bool = True,
        nc_train_every: int = 1,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.nc_train_dataset = nc_train_dataset if nc_train_dataset is not None else self.train_dataset
        if nc_train_samples is not None and (isinstance(nc_train_samples, bool) or not isinstance(nc_train_samples, (int, np.integer))):
            raise ValueError(f"nc_train_samples must be an int or None, got {nc_train_samples!r}")
        self.nc_train_samples = nc_train_samples
        self.nc_eval = nc_eval
        self.nc_layers = "all" if nc_layers is True else ([] if nc_layers is False else nc_layers)
        self.nc_ncc = nc_ncc
        self.nc_plots = nc_plots
        self.nc_cache_mb = nc_cache_mb
        self._nc_cache_budget_mb = nc_cache_mb  # nc_cache_mb drops to 0 when the images do not fit; the rows keep it
        self.nc_prefix_cache = nc_prefix_cache
        if isinstance(nc_train_every, bool) or not isinstance(nc_train_every, (int, np.integer)) or nc_train_every < 1:
            raise ValueError(f"nc_train_every must be a positive int (1: measure the train subset at every evaluation), "
                             f"got {nc_train_every!r}")
        self.nc_train_every = int(nc_train_every)
        self._nc_train_eval_steps: list[int] = []  # global steps of the evaluations during training, in order
        self._nc_rows_failed = False  # the rows of the train subset were over the budget: PrefixCache.build
        self._nc_train_batches: Optional[list] = None
        self._nc_prefix: Optional[Any] = None  # the train subset's rows at the cut: SubsetRows, or a PrefixCache
        self._nc_prefix_off = False  # not exact / no gain for this model: never try again
        self._nc_frozen_blocks: dict[str, float] = {}  # per-block NC1 below the cut, measured once
        self.nc_num_classes = nc_num_classes
        self.nc_history: list[dict] = []
        self._nc_recorder: Optional[LayerFeatures] = None
        self._nc_eval_stats: Optional[LayerStats] = None
        self._nc_train_cache: Optional[tuple] = None  # (fingerprint of the weights, metrics)
        self._nc_evaluate_calls = 0
        self._nc_depth = 0
        self._nc_train_indices: list[int] = []
        self._nc_check_setup()
        name = self.args.metric_for_best_model
        canonical = canonical_metric_name(name)
        if canonical != name:
            logger.info("metric_for_best_model=%s is read as %s", name, canonical)
            self.args.metric_for_best_model = canonical
        if self.nc_train_every > 1 and canonical and canonical.startswith(TRAIN_SUBSET_PREFIX + "_"):
            raise ValueError(f"metric_for_best_model={name!r} needs the train subset at every evaluation, but "
                             f"nc_train_every={self.nc_train_every} skips it at some: use nc_train_every=1 or select on "
                             "another metric (e.g. eval_nc1)")
        direction = metric_direction(canonical)
        if direction is not None and self.args.greater_is_better != direction:
            logger.info("metric_for_best_model=%s: greater_is_better set to %s", canonical, direction)
            self.args.greater_is_better = direction
        self.add_callback(_NCHistoryCallback(self))

    # ------------------------------------------------------------------ set-up
    def _infer_num_classes(self) -> int:
        for ds in (self.nc_train_dataset, self.train_dataset, self.eval_dataset):
            features = getattr(ds, "features", None) or {}
            for key in ("label", "labels"):
                if hasattr(features.get(key), "num_classes"):
                    return int(features[key].num_classes)
        return int(resolve_backbone(self.model).model.config.num_labels)

    @property
    def nc_train_enabled(self) -> bool:
        """Whether the train subset is measured (``nc_train_samples != 0`` and there is data)."""
        return self.nc_train_dataset is not None and self.nc_train_samples != 0

    def _nc_check_setup(self) -> None:
        """Everything that would otherwise fail only at the first evaluation, checked now."""
        if not (self.nc_eval or self.nc_train_enabled):
            return
        try:
            resolve_backbone(self.model)
        except ValueError as e:
            raise ValueError(f"NCTrainer cannot measure NC of this model: {e} "
                             "(pass nc_eval=False and nc_train_samples=0 to train it without NC)") from e
        self.nc_num_classes = check_num_classes(self.nc_num_classes or self._infer_num_classes())
        try:
            LayerFeatures(self.model, layers=self.nc_layers)
        except (ValueError, TypeError) as e:
            raise ValueError(f"nc_layers={self.nc_layers!r}: {e}") from e
        K = self.nc_num_classes
        evals = self.eval_dataset if isinstance(self.eval_dataset, dict) else {"eval_dataset": self.eval_dataset}
        for name, ds in evals.items():
            labels = dataset_labels(ds) if ds is not None and self.nc_eval else None
            if labels is not None:
                check_labels(labels, K, name if name == "eval_dataset" else f"eval_dataset[{name!r}]")
        if not self.nc_train_enabled:
            return
        if not hasattr(self.nc_train_dataset, "__len__") or not hasattr(self.nc_train_dataset, "__getitem__"):
            raise ValueError("nc_train_dataset must be a map-style dataset (len() and indexing) to draw the train "
                             "subset from; pass one (e.g. the training data with evaluation transforms), or "
                             "nc_train_samples=0 to switch train-subset NC off")
        labels = dataset_labels(self.nc_train_dataset, read_items=True)
        check_labels(labels, K, "nc_train_dataset")
        missing = sorted(set(range(K)) - {int(v) for v in np.unique(labels)})
        if missing:
            raise ValueError(f"nc_train_dataset has no images of class(es) {missing[:10]} of nc_num_classes={K}: "
                             "train-subset NC needs every class (fix nc_num_classes, or pass nc_train_samples=0 to "
                             "switch train-subset NC off)")
        n = self.nc_train_samples
        if n is None or n < 0 or n >= len(labels):
            self._nc_train_indices = list(range(len(labels)))
            return
        if n < K:
            raise ValueError(f"nc_train_samples={n} cannot hold one image of each of the {K} classes: use "
                             f"nc_train_samples >= {K}, None (all images) or 0 (no train-subset NC)")
        self._nc_train_indices = stratified_indices(labels, n, seed=self.args.seed, num_classes=K).tolist()

    @property
    def _nc_backbone(self):
        return resolve_backbone(self.model)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """``Trainer.evaluate`` plus NC metrics (see the class docstring)."""
        if self._nc_depth == 0:
            self._nc_evaluate_calls += 1  # a dict of eval sets recurses: one train-subset pass for all
        self._nc_depth += 1
        try:
            metrics = super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self._nc_depth -= 1
        for key in [k for k in metrics if k.startswith(TRAIN_SUBSET_PREFIX + "_")]:
            metrics.setdefault(LEGACY_TRAIN_PREFIX + key[len(TRAIN_SUBSET_PREFIX):], metrics[key])  # unlogged alias
        if not isinstance(eval_dataset, dict):  # a dict recurses into this method once per data set
            if self.args.should_save:
                save_history(self.nc_history, self.args.output_dir)
            if not self.is_in_train:
                self.plot_nc_history()
        return metrics

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        if not self.nc_eval and description != "Evaluation":
            return super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        recorder = LayerFeatures(self.model, layers=self.nc_layers, include_final=True) if self.nc_eval else None
        self._nc_eval_stats = LayerStats(self.nc_num_classes, recorder.keys) if self.nc_eval else None
        try:
            if recorder is not None:
                self._nc_recorder = recorder.__enter__()
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        finally:
            if recorder is not None:
                recorder.__exit__(None, None, None)
            self._nc_recorder = None
        records = {}
        if self._nc_eval_stats is not None:
            records[metric_key_prefix] = self._nc_eval_stats.reduce().metrics(
                self._nc_backbone.classifier, f"the evaluation data ({metric_key_prefix})")
            self._nc_eval_stats = None
        if description == "Evaluation" and self.nc_train_enabled and self._nc_train_due():
            records["train"] = self.train_nc_metrics()
        for prefix, values in records.items():
            output.metrics.update(flatten(TRAIN_SUBSET_PREFIX if prefix == "train" else prefix, values))
            if description == "Evaluation":
                upsert(self.nc_history, self.state.global_step, self.state.epoch, prefix, values)
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        out = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        recorder, stats = self._nc_recorder, self._nc_eval_stats
        labels = inputs.get("labels") if isinstance(inputs, dict) else None
        if recorder is not None and stats is not None and labels is not None and recorder.features:
            feats = recorder.pop()
            stats.update(feats, labels, rows=self._nc_real_rows(labels.shape[0]))
        return out

    def _nc_real_rows(self, batch_size: int) -> int:
        """Rows of this rank's batch that are real samples, not padding.

        Accelerate pads only the last round of batches (``even_batches``) and its
        ``gather_for_metrics`` keeps the first ``remainder`` rows of the rank-ordered
        concatenation; this keeps exactly this rank's share of those.
        """
        acc = self.accelerator
        state = acc.gradient_state
        if acc.num_processes > 1 and acc.even_batches and state.end_of_dataloader and state.remainder > 0:
            return max(0, min(batch_size, state.remainder - acc.process_index * batch_size))
        return batch_size

    # ------------------------------------------------------------------ train subset
    def nc_train_indices(self) -> list[int]:
        """The seeded, stratified subset of ``nc_train_dataset`` measured at every evaluation
        (all ranks agree); empty when train-subset NC is off."""
        return list(self._nc_train_indices)

    def nc_train_shard(self) -> list[int]:
        """This rank's share of :meth:`nc_train_indices`: disjoint across ranks, nothing repeated
        (possibly empty when the subset is smaller than the world size)."""
        return self._nc_train_indices[self.args.process_index :: self.args.world_size]

    def get_nc_train_dataloader(self) -> DataLoader:
        """This rank's shard of the train subset (see :meth:`nc_train_shard`)."""
        return DataLoader(
            Subset(self.nc_train_dataset, self.nc_train_shard()),
            batch_size=self.args.per_device_eval_batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
        )

    def _nc_train_batches_or_loader(self):
        """The cached train-subset batches, else the loader (cached on first use if small enough)."""
        if self._nc_train_batches is not None:
            return self._nc_train_batches
        loader = self.get_nc_train_dataloader()
        if self.nc_cache_mb <= 0:
            return loader
        batches, size = [], 0
        for batch in loader:
            size += sum(v.numel() * v.element_size() for v in batch.values() if isinstance(v, torch.Tensor)) if isinstance(batch, dict) else 0
            if not isinstance(batch, dict) or size > self.nc_cache_mb * 2**20:
                self.nc_cache_mb = 0  # too large (or not a dict batch): stream from now on
                return loader
            batches.append(batch)
        self._nc_train_batches = batches
        return batches

    def _nc_fingerprint(self) -> tuple:
        """Names the weights the train subset is measured with: during training the global step
        (weights change only at optimizer steps), outside it one ``evaluate()`` call (the user may
        change the model between calls). Tensor version counters cannot serve: fused optimizers
        (transformers' default ``adamw_torch_fused``) update parameters without bumping them."""
        if self.is_in_train:
            return ("step", id(self.model), self.state.global_step)
        return ("call", id(self.model), self._nc_evaluate_calls)

    @torch.no_grad()
    def _nc_stream_train(self, stats: LayerStats, recorder: LayerFeatures, batches, ncc: bool,
                         capture: Optional[RowCapture] = None) -> None:
        device = next(self.model.parameters()).device
        # NC needs the classifier's input, not its logits: the forward stops there (no head, no loss).
        # Not under FSDP / DeepSpeed: their hooks re-shard parameters after a forward that completes.
        sharded = getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_deepspeed_enabled", False)
        stop = ClassifierStop(recorder.backbone) if FINAL in recorder.keys and not sharded else contextlib.nullcontext()
        with stop:
            for batch in batches:
                pixel_values, labels = unpack_batch(batch)
                try:
                    self.model(pixel_values=pixel_values.to(device))
                except StopAtClassifier:
                    pass
                feats = recorder.pop()
                if capture is not None:
                    capture.take(labels)
                if ncc:
                    stats.ncc_pass(feats, labels)
                else:
                    stats.update(feats, labels)

    def _nc_prefix_cut(self) -> Optional[int]:
        """The first tuned block when a train-subset prefix cache would be exact and gain something."""
        if self._nc_prefix_off or not self.nc_prefix_cache or self.args.world_size > 1:
            return None
        from ..prefix_cache import PrefixCache, first_tuned_block, prefix_cache_problems

        data = self.nc_train_dataset
        while isinstance(data, Subset):
            data = data.dataset
        if isinstance(data, PrefixCache):  # its items already are cached prefix states
            self._nc_prefix_off = True
            return None

        try:
            cut = first_tuned_block(self.model)
            ok = 0 < cut and not prefix_cache_problems(self.model, cut)
        except Exception as e:  # noqa: BLE001 - any model the cache does not know runs uncached
            logger.debug("no prefix cache for the train subset: %s", e)
            ok = False
        if not ok:
            self._nc_drop_prefix()
            self._nc_prefix_off = True
            return None
        if self._nc_prefix is not None and self._nc_prefix.layout.block != cut:
            self._nc_drop_prefix()
        return cut

    def _nc_drop_prefix(self) -> None:
        if self._nc_prefix is not None:
            self._nc_prefix.close()
        self._nc_prefix, self._nc_frozen_blocks, self._nc_rows_failed = None, {}, False

    def _nc_layer_list(self) -> list[int]:
        backbone = self._nc_backbone
        if self.nc_layers == "all":
            return list(range(backbone.num_layers))
        return sorted({backbone.layer_index(i) for i in self.nc_layers})

    def _nc_budget_bytes(self) -> int:
        return int(max(self._nc_cache_budget_mb, 0) * 2**20)

    def _nc_train_pass(self, layers, batches, capture: Optional[RowCapture] = None) -> LayerStats:
        """One streamed pass (plus the NCC pass) over ``batches``, reduced across processes.

        With ``capture`` the pass (over images) also grabs the rows at the cut; when it got them they
        become the train subset's prefix cache, and the NCC pass already runs from them.
        """
        with LayerFeatures(self.model, layers=layers) as recorder:
            stats = LayerStats(self.nc_num_classes, recorder.keys)
            with capture if capture is not None else contextlib.nullcontext():
                self._nc_stream_train(stats, recorder, batches, ncc=False, capture=capture)
            stats.reduce()
        attach = False  # the NCC pass runs from the rows just grabbed (a cached pass is attached already)
        if capture is not None:
            rows = capture.result()
            if rows is None:
                self._nc_rows_failed = True  # over the budget: PrefixCache.build (memory-mapped) next time
            else:
                self._nc_prefix, self._nc_train_batches = rows, None  # the images are not needed any more
                batches, attach = rows.batches, True
        if self.nc_ncc and not stats.nonfinite.get(FINAL):  # agreed on every rank by reduce()
            with LayerFeatures(self.model, layers=[]) as recorder:  # NCC: the final features only
                with self._nc_attached() if attach else contextlib.nullcontext():
                    self._nc_stream_train(stats, recorder, batches, ncc=True)
            stats.second_reduce()
        return stats

    @contextlib.contextmanager
    def _nc_attached(self):
        """The model runs from the train subset's cached rows inside (images still work)."""
        from ..prefix_cache import PrefixCacheHandle

        model = self.model
        attached = resolve_backbone(model).model.__dict__.get(PrefixCacheHandle._ATTR)
        handle = PrefixCacheHandle.install(model, self._nc_prefix.layout)
        try:
            yield
        finally:
            if attached is None:  # leave a handle the user attached for training alone
                handle.remove()

    def _nc_row_batches(self, cut: int):
        """Batches of cached prefix states of the train subset: the rows grabbed by the first pass, or
        (when they were over ``nc_cache_mb``) a :class:`~hf_nc.prefix_cache.PrefixCache` built now,
        memory-mapped; ``None`` when that cannot be built."""
        from ..prefix_cache import PrefixCache, PrefixCacheError

        if isinstance(self._nc_prefix, SubsetRows):
            return self._nc_prefix.batches
        if self._nc_prefix is None:
            amp = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None
            try:
                self._nc_prefix = PrefixCache.build(
                    self.model, Subset(self.nc_train_dataset, self.nc_train_shard()), self.data_collator,
                    batch_size=self.args.per_device_eval_batch_size, block=cut, progress=False, check_dataset=False,
                    memory_budget=self._nc_budget_bytes(), autocast_dtype=amp)
            except PrefixCacheError as e:
                logger.info("train-subset NC without a prefix cache: %s", e)
                self._nc_prefix_off = True
                return None
        cache = self._nc_prefix

        def collate(items):
            return {"pixel_values": torch.stack([i["pixel_values"] for i in items]),
                    "labels": torch.tensor([int(i["labels"]) for i in items])}

        return DataLoader(cache, batch_size=self.args.per_device_eval_batch_size, collate_fn=collate)

    def _nc_train_due(self) -> bool:
        """Whether this evaluation measures the train subset (``nc_train_every``)."""
        if self.nc_train_every == 1 or not self.is_in_train:
            return True
        step = self.state.global_step
        if self.state.max_steps and step >= self.state.max_steps:
            return True  # the last evaluation of training
        if step not in self._nc_train_eval_steps:  # a dict of eval sets evaluates several times per step
            self._nc_train_eval_steps.append(step)
        return self._nc_train_eval_steps.index(step) % self.nc_train_every == 0

    def train_nc_metrics(self) -> dict:
        """NC of the train subset (an extra forward pass in eval mode), reduced across processes.

        Collective under torch.distributed: every rank calls it (a rank with an empty shard too).
        The result is reused while the weights cannot have changed (see :meth:`_nc_fingerprint`):
        at the same training step, and within one ``evaluate()`` of a dict ``eval_dataset``.
        With ``nc_prefix_cache`` the frozen prefix runs once (see the class docstring).
        """
        if not self.nc_train_enabled:
            return {}
        fingerprint = self._nc_fingerprint()
        if self._nc_train_cache is not None and self._nc_train_cache[0] == fingerprint:
            return self._nc_train_cache[1]
        from ..prefix_cache import PrefixCacheError

        model = self.model
        was_training = model.training
        model.eval()
        from_rows = False
        try:
            with self.accelerator.autocast():
                cut = self._nc_prefix_cut()
                layers = self._nc_layer_list()
                frozen = [i for i in layers if cut is not None and i < cut]
                if cut is not None and self._nc_prefix is None and not self._nc_rows_failed:
                    # The first pass with this cut: over the images, every block measured, rows grabbed
                    capture = RowCapture(self._nc_backbone, cut, self._nc_budget_bytes())
                    stats = self._nc_train_pass(layers, self._nc_train_batches_or_loader(), capture=capture)
                else:
                    # A frozen block's NC1 that came out NaN is measured again, on images
                    batches = self._nc_row_batches(cut) if cut is not None and not (frozen and not self._nc_frozen_blocks) else None
                    stats = None
                    if batches is not None:
                        try:
                            with self._nc_attached():
                                stats = self._nc_train_pass([i for i in layers if i >= cut], batches)
                            from_rows = True
                        except PrefixCacheError as e:  # e.g. the user attached a cache of another layout
                            logger.info("train-subset NC without a prefix cache: %s", e)
                            self._nc_drop_prefix()
                            self._nc_prefix_off = True
                    if stats is None:
                        stats = self._nc_train_pass(layers, self._nc_train_batches_or_loader())
        finally:
            model.train(was_training)
        metrics = stats.metrics(self._nc_backbone.classifier, "the train subset", ncc=self.nc_ncc)
        if from_rows and self._nc_frozen_blocks:
            metrics["blocks"] = dict(sorted({**self._nc_frozen_blocks, **metrics.get("blocks", {})}.items(),
                                            key=lambda kv: int(kv[0])))
        elif not from_rows and cut is not None and not self._nc_prefix_off and "blocks" in metrics:
            frozen_nc1 = {k: v for k, v in metrics["blocks"].items() if int(k) < cut}
            if all(math.isfinite(v) for v in frozen_nc1.values()):  # else measure them again next time
                self._nc_frozen_blocks = frozen_nc1
        self._nc_train_cache = (self._nc_fingerprint(), metrics)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``; checkpoints keep transformers' current parameter names.

        transformers 5.x ``save_pretrained`` writes legacy names by default (``save_original_format``)
        while the Trainer's own resume and ``load_best_model_at_end`` paths load checkpoints with a
        plain ``load_state_dict``, which then silently loads nothing for renamed families (ViT).
        Checkpoints (``_internal_call``) are therefore saved with ``save_original_format=False``;
        a final ``save_model()`` keeps the default format, and for a PEFT model writes the hf-nc
        card as the folder's ``README.md`` (:class:`~hf_nc.trainer.card.NCModelCardMixin`) over
        PEFT's blank one.
        """
        model = self.accelerator.unwrap_model(self.model) if _internal_call else None
        patch = isinstance(model, PreTrainedModel) and "save_original_format" in inspect.signature(model.save_pretrained).parameters
        if patch:
            model.save_pretrained = functools.partial(model.save_pretrained, save_original_format=False)
        try:
            super().save_model(output_dir, _internal_call=_internal_call)
        finally:
            if patch:
                del model.save_pretrained

    # ------------------------------------------------------------------ history
    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        """``Trainer.train``; on resume the NC history is restored up to the checkpoint's step."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        self.nc_history = restore_history(checkpoint, self.args.output_dir) if isinstance(checkpoint, str) else []
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def plot_nc_history(self) -> list:
        """Draws the PNG plots into ``output_dir`` (main process) and returns their paths."""
        if not (self.nc_plots and self.args.should_save and self.nc_history):
            return []
        return plot_history(self.nc_history, self.args.output_dir)
