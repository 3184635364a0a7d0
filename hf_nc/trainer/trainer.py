"""NCTrainer: a ``transformers.Trainer`` that also reports neural collapse at every evaluation."""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Iterable, Literal, Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from ..backbones import resolve_backbone
from ..features import LayerFeatures
from ..layer_nc import layer_nc_stats
from .collect import LayerStats, flatten, metric_direction
from .history import plot_history, restore_history, save_history, upsert

logger = logging.getLogger(__name__)

NCLayers = Union[bool, Literal["all"], Iterable[int]]


class _NCHistoryCallback(TrainerCallback):
    """Copies the NC history into every checkpoint and draws the plots when training ends."""

    def __init__(self, trainer: "NCTrainer"):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            import os

            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                save_history(self.trainer.nc_history, folder)

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.plot_nc_history()


class NCTrainer(Trainer):
    """A drop-in :class:`transformers.Trainer` that also measures neural collapse (NC).

    At every evaluation it computes the NC metrics (``nc1``, ``nc2_etf``, ``nc2_equinorm``,
    ``nc2_equiangle``, ``nc3`` for a linear classifier, ``cdnv``; ``ncc_acc`` with ``nc_ncc``)
    of the features that enter the classifier (the backbone spec's classifier input, also under
    PEFT wrapping), on

    * the evaluation data: collected by hooks during the Trainer's own evaluation loop (no
      extra forward pass), logged as ``eval_nc1``, ... (``test_nc1`` for ``predict``);
    * a fixed, seeded subset of the training data (``nc_train_samples`` images of
      ``nc_train_dataset``, which should be the training data *without* augmentation): one extra
      forward pass, logged as ``train_nc1``, ...;

    and, with ``nc_layers``, NC1 of every block's pooled output (``eval_nc1_block3``, ...).
    The metrics go through ``Trainer.log`` (console, TensorBoard, W&B, ...) and are returned by
    ``evaluate()``. Statistics are streamed per batch (:class:`~hf_nc.metrics.NCStats`) and
    summed across processes; features are never gathered. Under DDP each sample counts once:
    the duplicates Accelerate pads the last evaluation batch with are dropped, and the train
    subset is split into disjoint per-rank shards without padding.

    ``metric_for_best_model`` may name an NC metric, e.g. ``"train_nc1"`` or ``"eval_nc1"``:
    ``greater_is_better`` is then set from the metric (lower is better, except ``ncc_acc``),
    and since the Trainer looks a name up with an ``eval_`` prefix, ``evaluate()`` also returns
    ``eval_train_nc1`` for it.

    The history of all evaluations is kept in ``output_dir/nc_history.json`` and in every
    checkpoint (``resume_from_checkpoint`` restores it, up to the resumed step); when training
    ends (and after an ``evaluate()`` outside training) ``nc1_history.png`` (train and eval NC1
    against steps, log scale) and ``nc1_per_layer.png`` (last per-block curve) are drawn there.

    Args:
        nc_train_dataset: Training data for the train-subset NC (default: ``train_dataset``;
            pass the same data with evaluation transforms when training uses augmentation).
        nc_train_samples: Size of the seeded (``args.seed``) subset; ``None`` or <= 0: all of it.
        nc_eval: Also measure NC on the evaluation data.
        nc_layers: ``False``, ``True``/``"all"`` (every block) or block indices, for per-block NC1.
        nc_ncc: Also compute ``train_ncc_acc`` (a second forward pass over the train subset).
        nc_num_classes: K; default: the ClassLabel of the dataset, else ``config.num_labels``.
        nc_plots: Draw the PNG plots.
        nc_cache_mb: Keep this rank's collated train-subset batches in memory (CPU) when they fit
            in this many MiB, so later evaluations skip loading and transforming them again.
        Everything else goes to :class:`transformers.Trainer`.
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
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.nc_train_dataset = nc_train_dataset if nc_train_dataset is not None else self.train_dataset
        self.nc_train_samples = nc_train_samples
        self.nc_eval = nc_eval
        self.nc_layers = "all" if nc_layers is True else ([] if nc_layers is False else nc_layers)
        self.nc_ncc = nc_ncc
        self.nc_plots = nc_plots
        self.nc_cache_mb = nc_cache_mb
        self._nc_train_batches: Optional[list] = None
        self.nc_num_classes = nc_num_classes or self._infer_num_classes()
        self.nc_history: list[dict] = []
        self._nc_recorder: Optional[LayerFeatures] = None
        self._nc_eval_stats: Optional[LayerStats] = None
        self._nc_train_cache: Optional[dict] = None
        self._nc_depth = 0
        direction = metric_direction(self.args.metric_for_best_model)
        if direction is not None and self.args.greater_is_better != direction:
            logger.info("metric_for_best_model=%s: greater_is_better set to %s", self.args.metric_for_best_model, direction)
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
    def _nc_backbone(self):
        return resolve_backbone(self.model)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """``Trainer.evaluate`` plus NC metrics (see the class docstring)."""
        top = self._nc_depth == 0
        if top:
            self._nc_train_cache = None  # one train-subset pass per evaluate() call
        self._nc_depth += 1
        try:
            metrics = super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self._nc_depth -= 1
        name = self.args.metric_for_best_model
        if top and name and not name.startswith("eval_") and name in metrics:
            metrics.setdefault(f"eval_{name}", metrics[name])  # the Trainer looks up "eval_" + name
        if top:
            if self.args.should_save:
                save_history(self.nc_history, self.args.output_dir)
            if not self.is_in_train:
                self.plot_nc_history()
        return metrics

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        if not self.nc_eval and description != "Evaluation":
            return super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        self._nc_eval_stats = LayerStats(self.nc_num_classes) if self.nc_eval else None
        recorder = LayerFeatures(self.model, layers=self.nc_layers, include_final=True) if self.nc_eval else None
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
            records[metric_key_prefix] = self._nc_eval_stats.reduce().metrics(self._nc_backbone.classifier, metric_key_prefix)
            self._nc_eval_stats = None
        if description == "Evaluation" and self.nc_train_samples != 0:
            if self._nc_train_cache is None:
                self._nc_train_cache = self.train_nc_metrics()
            records["train"] = self._nc_train_cache
        for prefix, values in records.items():
            output.metrics.update(flatten(prefix, values))
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
        """The seeded subset of ``nc_train_dataset`` measured at every evaluation (all ranks agree)."""
        n = len(self.nc_train_dataset)
        k = n if not self.nc_train_samples or self.nc_train_samples < 0 else min(n, self.nc_train_samples)
        if k == n:
            return list(range(n))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.args.seed))
        return sorted(perm[:k].tolist())

    def get_nc_train_dataloader(self) -> DataLoader:
        """This rank's shard of the train subset: disjoint across ranks, nothing repeated."""
        indices = self.nc_train_indices()[self.args.process_index :: self.args.world_size]
        return DataLoader(
            Subset(self.nc_train_dataset, indices),
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

    def train_nc_metrics(self) -> dict:
        """NC of the train subset (an extra forward pass in eval mode), reduced across processes."""
        if self.nc_train_dataset is None:
            return {}
        stats = LayerStats(self.nc_num_classes)
        with self.accelerator.autocast():
            stats.stats = layer_nc_stats(
                self.model, self._nc_train_batches_or_loader(), self.nc_num_classes,
                layers=self.nc_layers, ncc=self.nc_ncc, progress=False,
            )
        return stats.metrics(self._nc_backbone.classifier, "the train subset")

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``; checkpoints keep transformers' current parameter names.

        transformers 5.x ``save_pretrained`` writes legacy names by default (``save_original_format``)
        while the Trainer's own resume and ``load_best_model_at_end`` paths load checkpoints with a
        plain ``load_state_dict``, which then silently loads nothing for renamed families (ViT).
        Checkpoints (``_internal_call``) are therefore saved with ``save_original_format=False``;
        a final ``save_model()`` keeps the default format.
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
