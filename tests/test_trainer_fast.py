"""NCTrainer's train-subset pass (issue 13 §2c): fast, and equal to a dense recomputation.

The first evaluation runs one full pass over the subset's images: it measures every block and
grabs the hidden states at the first tuned block; later evaluations run the model from there
(the frozen prefix never again), and the forward stops at the classifier's input. Each test checks
the logged numbers against ``hf_nc.nc_metrics`` on features of a plain forward of the same images
with the weights of that evaluation, and counts what ran.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from peft import get_peft_model
from tiny_models import _VISION
from tiny_training import collate, pattern_dataset
from transformers import TrainerCallback, TrainingArguments

import hf_nc
from hf_nc.features import FINAL, extract_features
from hf_nc.metrics import nc_metrics
from hf_nc.trainer import TRAIN_SUBSET_NC1, TRAIN_SUBSET_PREFIX, NCTrainer
from hf_nc.trainer.subset_rows import SubsetRows

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

COUNTS = [6, 7, 5]  # 18 images of 3 classes
KEYS = ("nc1", "nc2_etf", "nc2_equinorm", "nc2_equiangle", "nc3", "cdnv", "ncc_acc")


def _vit(seed: int = 0) -> tf.ViTForImageClassification:
    torch.manual_seed(seed)
    return tf.ViTForImageClassification(tf.ViTConfig(**_VISION, num_labels=3)).eval()


def _model(method: str) -> torch.nn.Module:
    if method == "scl":
        return get_peft_model(_vit(), hf_nc.SCLConfig(layer=2))
    if method == "layer":
        return get_peft_model(_vit(), hf_nc.LayerFTConfig(layers=[2, 3]))
    if method == "head":
        return get_peft_model(_vit(), hf_nc.HeadFTConfig(heads={3: "all"}))
    model = _vit()  # linear probe: every block frozen, the cut is after the last block
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("classifier")
    return model


def _args(tmp_path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=8,
                remove_unused_columns=False, report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no",
                learning_rate=5e-3, seed=0, max_steps=3, eval_strategy="steps", eval_steps=1)
    base.update(kw)
    return TrainingArguments(**base)


class _DenseReference(TrainerCallback):
    """At every evaluation: NC of the train subset from a plain forward of its images (the weights of
    that evaluation), with ``hf_nc.nc_metrics``, per block too."""

    def __init__(self, trainer: NCTrainer, data):
        self.trainer, self.data, self.records = trainer, data, []

    def on_evaluate(self, args, state, control, **kwargs):
        model = self.trainer.model
        was_training = model.training
        batch = collate([self.data[i] for i in self.trainer.nc_train_indices()])
        with torch.no_grad():
            feats = extract_features(model.eval(), batch["pixel_values"], layers="all")
        model.train(was_training)
        weight = hf_nc.LayerFeatures(model, layers=[]).backbone.classifier.weight.detach()
        final = nc_metrics(feats[FINAL], batch["labels"], num_classes=3, classifier_weight=weight)
        blocks = {str(k): nc_metrics(v, batch["labels"], num_classes=3)["nc1"] for k, v in feats.items() if k != FINAL}
        self.records.append((state.global_step, final, blocks))


def _run(tmp_path, method, nc_layers=True, **nc_kwargs):
    data = pattern_dataset(COUNTS)
    model = _model(method)
    trainer = NCTrainer(model=model, args=_args(tmp_path), train_dataset=data, eval_dataset=data,
                        data_collator=collate, nc_plots=False, nc_layers=nc_layers, nc_ncc=True, **nc_kwargs)
    reference = _DenseReference(trainer, data)
    trainer.add_callback(reference)
    backbone = hf_nc.LayerFeatures(model, layers=[]).backbone
    block0 = []  # images through block 0's attention: it runs only where the prefix really runs
    handle = backbone.blocks[0].attention.register_forward_hook(lambda m, a, o: block0.append(a[0].shape[0]))
    trainer.train()
    handle.remove()
    return trainer, reference.records, sum(block0)


def _assert_equal(trainer, records, nc_layers=True):
    history = {r["step"]: r["train"] for r in trainer.nc_history}
    assert len(records) == 3 and sorted(history) == [s for s, _, _ in records]
    for step, final, blocks in records:
        got = history[step]
        for key in KEYS:
            assert got[key] == pytest.approx(float(final[key]), rel=1e-5, abs=1e-7), (step, key)
        if nc_layers:
            assert set(got["blocks"]) == set(blocks)
            for block, value in blocks.items():
                assert got["blocks"][block] == pytest.approx(float(value), rel=1e-5), (step, block)


# 3 training steps on 18 images (batch 8: 8 + 8 + 2 through block 0 in training), then 3 evaluations; each
# evaluation: the eval data (18) through the Trainer's loop, the dense reference's forward (18), and the
# train subset (18) twice (NC and NCC) where the prefix is not cached
TRAINING, EVAL_DATA, SUBSET = 8 + 8 + 2, 3 * 18 + 3 * 18, 18


@pytest.mark.parametrize("method", ["scl", "layer", "head", "probe"])
def test_train_subset_fast_path_equals_dense_reference(tmp_path, method):
    trainer, records, block0 = _run(tmp_path, method)
    _assert_equal(trainer, records)
    rows = trainer._nc_prefix
    assert isinstance(rows, SubsetRows)  # the rows the first pass grabbed, no separate cache build
    assert rows.layout.block == {"scl": 2, "layer": 2, "head": 3, "probe": 4}[method]
    assert rows.layout.parts == (2 if method == "scl" else 1)
    # the prefix ran over the train subset once (the first evaluation's NC pass), never again
    assert block0 == TRAINING + EVAL_DATA + SUBSET


def test_train_subset_fast_path_without_per_block_nc(tmp_path):
    trainer, records, block0 = _run(tmp_path, "scl", nc_layers=False)
    _assert_equal(trainer, records, nc_layers=False)
    assert block0 == TRAINING + EVAL_DATA + SUBSET


def test_rows_over_budget_fall_back_to_a_prefix_cache(tmp_path):
    """Rows over nc_cache_mb: the frozen prefix is cached memory-mapped (PrefixCache.build) instead."""
    from hf_nc.prefix_cache import PrefixCache

    trainer, records, block0 = _run(tmp_path, "scl", nc_cache_mb=1e-3)
    _assert_equal(trainer, records)
    assert isinstance(trainer._nc_prefix, PrefixCache) and trainer._nc_prefix.on_disk
    # the first evaluation on images, the second builds the cache (18 + a 1-image probe) and runs from it
    assert block0 == TRAINING + EVAL_DATA + 2 * SUBSET + SUBSET + 1


def test_train_subset_pass_stops_at_the_classifier(tmp_path):
    """The train subset needs the classifier's input, not its logits: the head never runs on it."""
    data = pattern_dataset(COUNTS)
    model = _vit()
    trainer = NCTrainer(model=model, args=_args(tmp_path), train_dataset=data, eval_dataset=data,
                        data_collator=collate, nc_plots=False, nc_ncc=True)
    rows = []
    handle = model.classifier.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    metrics = trainer.evaluate()
    handle.remove()
    assert sum(rows) == 18  # the eval data only (the Trainer's loss and logits), not the 2 x 18 of the subset
    batch = collate([data[i] for i in trainer.nc_train_indices()])
    with torch.no_grad():
        feats = extract_features(model, batch["pixel_values"], layers=[])[FINAL]
    dense = nc_metrics(feats, batch["labels"], num_classes=3, classifier_weight=model.classifier.weight.detach())
    for key in KEYS:
        assert metrics[f"{TRAIN_SUBSET_PREFIX}_{key}"] == pytest.approx(float(dense[key]), rel=1e-5, abs=1e-7), key


def test_nc_train_every_measures_some_evaluations(tmp_path):
    """nc_train_every=2: the 1st, 3rd, ... evaluation and the last one of training; explicit evaluate() always."""
    data = pattern_dataset(COUNTS)
    trainer = NCTrainer(model=_vit(), args=_args(tmp_path, max_steps=5), train_dataset=data, eval_dataset=data,
                        data_collator=collate, nc_plots=False, nc_train_every=2)
    trainer.train()
    logged = {e["step"]: TRAIN_SUBSET_NC1 in e for e in trainer.state.log_history if "eval_nc1" in e}
    assert logged == {1: True, 2: False, 3: True, 4: False, 5: True}
    assert [r["step"] for r in trainer.nc_history if "train" in r] == [1, 3, 5]
    assert [r["step"] for r in trainer.nc_history if "eval" in r] == [1, 2, 3, 4, 5]
    assert TRAIN_SUBSET_NC1 in trainer.evaluate()


@pytest.mark.parametrize("resume", ["checkpoint-3", None])
def test_nc_train_every_keeps_its_schedule_over_a_resume_and_a_second_train(tmp_path, resume):
    # the evaluation count restarted at 0 in every train(): resumed after the 3rd evaluation, the 4th was measured
    # and the 5th not (uninterrupted: the 5th, not the 4th); a second train() continued the first run's count
    data = pattern_dataset(COUNTS)

    def trainer():
        return NCTrainer(model=_vit(), args=_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=1), train_dataset=data,
                         eval_dataset=data, data_collator=collate, nc_plots=False, nc_train_every=2)

    first = trainer()
    first.train()
    want = [r["step"] for r in first.nc_history if "train" in r]
    assert want == [1, 3, 5, 6]
    again = trainer() if resume else first
    again.train(resume_from_checkpoint=str(tmp_path / resume) if resume else None)
    assert [r["step"] for r in again.nc_history if "train" in r] == want


@pytest.mark.parametrize("every", [0, -1, 1.5, True, "2"])
def test_nc_train_every_must_be_a_positive_int(tmp_path, every):
    data = pattern_dataset(COUNTS)
    with pytest.raises(ValueError, match="nc_train_every must be a positive int"):
        NCTrainer(model=_vit(), args=_args(tmp_path), train_dataset=data, eval_dataset=data, data_collator=collate,
                  nc_train_every=every)


@pytest.mark.parametrize("metric", ["train_nc1", "eval_train_subset_nc1"])
def test_nc_train_every_refuses_selection_on_train_subset_nc(tmp_path, metric):
    data = pattern_dataset(COUNTS)
    with pytest.raises(ValueError, match="nc_train_every=3 skips it"):
        NCTrainer(model=_vit(), args=_args(tmp_path, metric_for_best_model=metric), train_dataset=data,
                  eval_dataset=data, data_collator=collate, nc_train_every=3)
