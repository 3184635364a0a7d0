"""NCTrainer: a ``transformers.Trainer`` that also reports neural collapse at every evaluation.

This module is the Trainer integration (arguments, the ``evaluate`` / ``evaluation_loop`` hooks,
checkpoint format, history on resume). The train-subset machinery is
:class:`~hf_nc.trainer.train_subset.TrainSubsetNC`, the model-card hooks
:class:`~hf_nc.trainer.card.NCModelCardMixin`, the label reading :mod:`hf_nc.trainer.labels`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
from typing import Any, Iterable, Literal, Optional, Union

import numpy as np
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from ..backbones import resolve_backbone
from ..features import LayerFeatures
from ..metrics.validation import check_num_classes
from .card import NCModelCardMixin
from .collect import (
    LEGACY_TRAIN_PREFIX,
    TRAIN_SUBSET_PREFIX,
    LayerStats,
    canonical_metric_name,
    flatten,
    metric_direction,
)
from .history import plot_history, restore_history, save_history, upsert
from .labels import check_labels, class_label_count, dataset_labels
from .labels import check_labels as _check_labels  # noqa: F401 - the name code imported from here before labels.py
from .train_subset import TrainSubsetNC, assign_checked

logger = logging.getLogger(__name__)

NCLayers = Union[bool, Literal["all"], Iterable[int]]


def _subset_setting(name: str, doc: str) -> property:
    """A trainer attribute kept on its :class:`TrainSubsetNC` (read and written there)."""
    return property(lambda self: getattr(self.nc_train_subset, name),
                    lambda self, value: setattr(self.nc_train_subset, name, value), doc=doc)


def _nc_setting(name: str, doc: str, normalise=lambda value: value) -> property:
    """An NC setting shared by the eval-data and train-subset NC; setting it after construction runs
    the construction-time checks again and drops what was measured or cached with the old value
    (the train subset's rows, result and frozen-block NC1), restoring the old value if they fail."""
    attr = "_" + name

    def check(self):
        if getattr(self, "_nc_built", False):  # else __init__ runs the checks once every setting is in
            self.nc_train_subset.settings_changed()
            self._nc_check_best_metric()

    def fset(self, value):
        assign_checked(self, attr, normalise(value), lambda: check(self))

    return property(lambda self: getattr(self, attr), fset, doc=doc)


def _layers_setting(value):
    """``nc_layers`` as passed -> ``"all"``, ``[]`` or the block indices."""
    return "all" if value is True else ([] if value is False or value is None else value)


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
        self._check_prefix_caches_attached(nc_train_dataset)
        #: the train-subset machinery (:class:`~hf_nc.trainer.train_subset.TrainSubsetNC`); the
        #: ``nc_train_*`` attributes and methods of the trainer read and write it
        self.nc_train_subset = TrainSubsetNC(
            self, nc_train_dataset if nc_train_dataset is not None else self.train_dataset, nc_train_samples,
            cache_mb=nc_cache_mb, prefix_cache=nc_prefix_cache, every=nc_train_every)
        self.nc_eval = nc_eval
        self.nc_layers = nc_layers
        self.nc_ncc = nc_ncc
        self.nc_plots = nc_plots
        self.nc_num_classes = nc_num_classes
        self.nc_history: list[dict] = []
        self._nc_recorder: Optional[LayerFeatures] = None
        self._nc_eval_stats: Optional[LayerStats] = None
        self._nc_depth = 0
        self._nc_check_setup()
        self._nc_check_best_metric()
        self._nc_built = True  # from now on setting nc_layers / nc_num_classes / nc_eval / nc_ncc re-runs the checks
        self.add_callback(_NCHistoryCallback(self))

    def _nc_check_best_metric(self) -> None:
        """``metric_for_best_model`` canonicalised, and refused where these settings never log it."""
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
        if direction is not None:
            self._nc_check_best_metric_is_logged(name, canonical)
        if direction is not None and self.args.greater_is_better != direction:
            logger.info("metric_for_best_model=%s: greater_is_better set to %s", canonical, direction)
            self.args.greater_is_better = direction

    # ------------------------------------------------------------------ set-up
    def _infer_num_classes(self) -> int:
        for ds in (self.nc_train_dataset, self.train_dataset, self.eval_dataset):
            count = class_label_count(ds)
            if count is not None:
                return count
        return int(resolve_backbone(self.model).model.config.num_labels)

    @property
    def nc_train_enabled(self) -> bool:
        """Whether the train subset is measured (``nc_train_samples != 0`` and there is data)."""
        return self.nc_train_subset.enabled

    def _nc_check_setup(self) -> None:
        """Everything that would otherwise fail only at the first evaluation, checked now."""
        if not (self.nc_eval or self.nc_train_enabled):
            return
        try:
            resolve_backbone(self.model)
        except ValueError as e:
            raise ValueError(f"NCTrainer cannot measure NC of this model: {e} "
                             "(pass nc_eval=False and nc_train_samples=0 to train it without NC)") from e
        # None: from the data; 0 is checked like any other value (it used to mean "infer" silently)
        self._nc_num_classes = check_num_classes(self._infer_num_classes() if self.nc_num_classes is None else self.nc_num_classes)
        try:
            LayerFeatures(self.model, layers=self.nc_layers)
        except (ValueError, TypeError) as e:
            raise ValueError(f"nc_layers={self.nc_layers!r}: {e}") from e
        K = self.nc_num_classes
        evals = self.eval_dataset if isinstance(self.eval_dataset, dict) else {"eval_dataset": self.eval_dataset}
        self._nc_check_layers_on_cached_rows(evals)
        for name, ds in evals.items():
            labels = dataset_labels(ds) if ds is not None and self.nc_eval else None
            if labels is not None:
                check_labels(labels, K, name if name == "eval_dataset" else f"eval_dataset[{name!r}]")
        self.nc_train_subset.setup(K, seed=self.args.seed)

    def _check_prefix_caches_attached(self, nc_train_dataset) -> None:
        """A :class:`~hf_nc.prefix_cache.PrefixCache` given as data needs the model attached to it: else its
        rows reach the embeddings as if they were images and the first step fails deep inside transformers
        ("not enough values to unpack"). And it must have been built under this run's mixed precision
        and from the frozen weights the model has now: else its rows are not the states the prefix
        computes here (float32 rows in a bf16 run, weights loaded or changed after ``attach``), a
        silent change of the run. Checked when the trainer is built and again when ``train()`` starts."""
        from ..prefix_cache import PrefixCache, PrefixCacheError, PrefixCacheHandle, training_autocast_dtype

        evals = self.eval_dataset if isinstance(self.eval_dataset, dict) else {"eval_dataset": self.eval_dataset}
        sets = {"train_dataset": self.train_dataset, "nc_train_dataset": nc_train_dataset,
                **{k if k == "eval_dataset" else f"eval_dataset[{k!r}]": v for k, v in evals.items()}}
        caches = {name: ds for name, ds in sets.items() if isinstance(ds, PrefixCache)}
        if not caches:
            return
        try:
            handle = resolve_backbone(self.model).model.__dict__.get(PrefixCacheHandle._ATTR)
        except ValueError:
            return  # not a supported backbone: the NC set-up says so
        for name, cache in caches.items():
            if handle is None or handle.layout != cache.layout:
                raise ValueError(f"{name} is a PrefixCache (rows entering block {cache.layout.block}), but "
                                 "the model is not attached to it" + ("" if handle is None else " (it is attached to a "
                                 "cache of another layout)") + ": call cache.attach(model) before building the trainer")
        amp = training_autocast_dtype(self.args)
        for name, cache in caches.items():
            if cache.layout.autocast_dtype != amp:
                def what(dtype):
                    return "without autocast" if dtype is None else f"under {str(dtype).removeprefix('torch.')} autocast"
                raise ValueError(f"{name} is a PrefixCache built {what(cache.layout.autocast_dtype)}, but this Trainer "
                                 f"runs {what(amp)} (bf16={self.args.bf16}, fp16={self.args.fp16}): its rows are not the "
                                 f"states the prefix computes in this run; build it with PrefixCache.build(..., "
                                 f"autocast_dtype={'None' if amp is None else amp})")
            try:
                PrefixCacheHandle._check_weights(self.model, cache.layout)
            except PrefixCacheError as e:
                raise PrefixCacheError(f"{name}: {e}") from None

    def _nc_check_best_metric_is_logged(self, name: str, canonical: str) -> None:
        """An NC ``metric_for_best_model`` these settings never log fails now, not at the first
        evaluation after training has started (transformers' KeyError)."""
        train = canonical.startswith(TRAIN_SUBSET_PREFIX + "_")
        block = re.search(r"_block(\d+)$", canonical)
        why = None
        if train and not self.nc_train_enabled:
            why = "the train subset is not measured (nc_train_samples=0, or no train data)"
        elif not train and not self.nc_eval:
            why = "nc_eval=False: the evaluation data's NC is not measured"
        elif "ncc_acc" in canonical and not train:
            why = "NCC accuracy is measured on the train subset only (eval_train_subset_ncc_acc, with nc_ncc=True)"
        elif "ncc_acc" in canonical and not self.nc_ncc:
            why = "nc_ncc=False: NCC accuracy is not measured"
        elif block is not None and int(block.group(1)) not in self.nc_train_subset._layer_list():
            why = f"block {block.group(1)} is not among nc_layers={self.nc_layers!r}"
        elif not train and not isinstance(self.eval_dataset, dict) and self.eval_dataset is not None:
            labels = dataset_labels(self.eval_dataset)
            if labels is not None and len(labels) and np.bincount(labels, minlength=self.nc_num_classes).max() < 2:
                # NC of such data is NaN at every evaluation (metrics/validation.check_within_class)
                why = ("the evaluation data has a single image in every class, so its NC metrics are undefined (NaN): "
                       "use more validation images per class, or select on the train subset (train_nc1)")
        if why:
            raise ValueError(f"metric_for_best_model={name!r} is never logged with these settings: {why}")

    def _nc_check_layers_on_cached_rows(self, evals: dict) -> None:
        """Per-block NC from frozen-prefix rows: the blocks below the cached one are skipped on
        those rows (each would report the cached block's features), so asking for them is an error."""
        from ..prefix_cache import PrefixCache

        if not self.nc_layers:
            return
        layers = self.nc_train_subset._layer_list()
        sets = {"nc_train_dataset (or train_dataset)": self.nc_train_subset.dataset if self.nc_train_enabled else None}
        if self.nc_eval:
            sets.update(evals)
        for name, ds in sets.items():
            if isinstance(ds, PrefixCache):
                cached = ds.layout.block - 1  # the rows are this block's output
                below = [i for i in layers if i < cached]
                if below:
                    raise ValueError(f"nc_layers={self.nc_layers!r}: {name} is a PrefixCache of block {cached}'s output, so the "
                                     f"blocks below it ({below}) never run on its rows and their NC cannot be measured from "
                                     f"them: pass nc_layers with blocks >= {cached}, or image datasets for NC")

    @property
    def _nc_backbone(self):
        return resolve_backbone(self.model)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """``Trainer.evaluate`` plus NC metrics (see the class docstring)."""
        if self._nc_depth == 0:
            self.nc_train_subset.evaluate_calls += 1  # a dict of eval sets recurses: one train-subset pass for all
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
        if description == "Evaluation" and self.nc_train_enabled and self.nc_train_subset.due():
            records["train"] = self.train_nc_metrics()
        recorded = {r["step"] for r in self.nc_history}
        for prefix, values in records.items():
            output.metrics.update(flatten(TRAIN_SUBSET_PREFIX if prefix == "train" else prefix, values))
            # outside training (a final evaluate(), maybe of the best checkpoint loaded at the end) a
            # record training made at this step stays: the history is the training curve
            if description == "Evaluation" and (self.is_in_train or self.state.global_step not in recorded):
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
    # The machinery lives in TrainSubsetNC; these keep the names users and subclasses call and override.
    def nc_train_indices(self) -> list[int]:
        """The seeded, stratified subset of ``nc_train_dataset`` measured at every evaluation
        (all ranks agree); empty when train-subset NC is off."""
        return self.nc_train_subset.indices()

    def nc_train_shard(self) -> list[int]:
        """This rank's share of :meth:`nc_train_indices`: disjoint across ranks, nothing repeated
        (possibly empty when the subset is smaller than the world size)."""
        return self.nc_train_subset.shard()

    def get_nc_train_dataloader(self) -> DataLoader:
        """This rank's shard of the train subset (see :meth:`nc_train_shard`).

        The train-subset passes over images take their batches from here: override it to load them
        differently.
        """
        return self.nc_train_subset.dataloader()

    def train_nc_metrics(self) -> dict:
        """NC of the train subset (an extra forward pass in eval mode), reduced across processes.

        Collective under torch.distributed: every rank calls it (a rank with an empty shard too).
        The result is reused while the weights cannot have changed
        (:meth:`~hf_nc.trainer.train_subset.TrainSubsetNC.fingerprint`): at the same training step,
        and within one ``evaluate()`` of a dict ``eval_dataset``. With ``nc_prefix_cache`` the frozen
        prefix runs once (see the class docstring).
        """
        return self.nc_train_subset.metrics()

    nc_eval = _nc_setting("nc_eval", "Whether NC of the evaluation data is measured (``nc_eval``).")
    nc_layers = _nc_setting("nc_layers", "Blocks with per-block NC1: ``\"all\"``, ``[]`` or indices (``nc_layers``; "
                                         "``True``/``False`` are read as at construction); setting it checks it again.",
                            _layers_setting)
    nc_ncc = _nc_setting("nc_ncc", "Whether the train subset's ``ncc_acc`` is computed (``nc_ncc``).")
    nc_num_classes = _nc_setting("nc_num_classes", "K (``nc_num_classes``; resolved from the data at construction); "
                                                   "setting it checks the data against it and draws the train subset again.")
    nc_train_dataset = _subset_setting("dataset", "Training data of the train-subset NC (``nc_train_dataset``); setting it "
                                                  "draws the subset again, with the construction-time checks.")
    nc_train_samples = _subset_setting("samples", "Size of the train subset as passed (``nc_train_samples``); setting it "
                                                  "draws the subset again.")
    nc_cache_mb = _subset_setting("cache_mb", "Memory budget of the cached train-subset batches, in MiB "
                                              "(``nc_cache_mb``; drops to 0 once they do not fit); setting it is the "
                                              "budget of the batches and the rows from then on (both cached again).")
    nc_prefix_cache = _subset_setting("prefix_cache", "Whether the train subset is measured from the first "
                                                      "tuned block (``nc_prefix_cache``).")
    nc_train_every = _subset_setting("every", "Measure the train subset at every k-th evaluation (``nc_train_every``).")

    @property
    def _nc_prefix(self) -> Optional[Any]:
        """The train subset's rows at the cut (``SubsetRows``, or a ``PrefixCache``), or ``None``."""
        return self.nc_train_subset.prefix

    @property
    def _nc_train_indices(self) -> list[int]:
        """The train subset's indices themselves (not a copy, unlike :meth:`nc_train_indices`)."""
        return self.nc_train_subset._indices

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
        # nc_train_every counts this run's evaluations: a resumed run goes on with the checkpoint's (step 0 is an
        # evaluate() before training unless eval_on_start), a new one starts again
        self.nc_train_subset._eval_steps = [r["step"] for r in self.nc_history if r["step"] > 0 or self.args.eval_on_start]
        self.nc_train_subset.train_calls += 1
        self._check_prefix_caches_attached(self.nc_train_subset.dataset)  # the model may have changed since
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def plot_nc_history(self) -> list:
        """Draws the PNG plots into ``output_dir`` (main process) and returns their paths."""
        if not (self.nc_plots and self.args.should_save and self.nc_history):
            return []
        return plot_history(self.nc_history, self.args.output_dir)
