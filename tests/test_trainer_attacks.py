"""NCTrainer under attack: many classes, bad settings, diverged models, key names and cards.

Each test is one way a user can break the trainer; it must end in a clear error at
construction or in correct numbers (checked against an offline dense recomputation), never in
a silent drop or a crash an epoch later. To add one: build the data with ``_dataset``, the
trainer with ``_trainer``, and assert what the user should see.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
import transformers as tf
from tiny_models import _VISION, build_tiny_model
from tiny_training import SIDE, collate
from tiny_training import pattern_dataset as _dataset  # ``counts[k]`` images of class k
from transformers import TrainingArguments

import hf_nc
from hf_nc.features import FINAL, extract_features
from hf_nc.metrics import nc_metrics
from hf_nc.trainer import (
    TRAIN_SUBSET_NC1,
    TRAIN_SUBSET_PREFIX,
    NCTrainer,
    canonical_metric_name,
    train_subset_key,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _model(num_labels: int, seed: int = 0) -> torch.nn.Module:
    """The tiny ViT; wider than K so that NC1 is well posed (with K > d the class means span every
    direction the final LayerNorm leaves, and NC1 then hinges on the pseudo-inverse's cut-off)."""
    torch.manual_seed(seed)
    sizes = dict(_VISION, hidden_size=192, intermediate_size=384) if num_labels > 16 else _VISION
    return tf.ViTForImageClassification(tf.ViTConfig(**sizes, num_labels=num_labels)).eval()


def _args(tmp_path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=16, per_device_eval_batch_size=128,
                remove_unused_columns=False, report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no",
                learning_rate=5e-3, seed=0)
    base.update(kw)
    return TrainingArguments(**base)


def _trainer(model, tmp_path, train, test=None, nc_kwargs=None, **kw) -> NCTrainer:
    return NCTrainer(model=model, args=_args(tmp_path, **kw), train_dataset=train, eval_dataset=test if test is not None else train,
                     data_collator=collate, **{"nc_plots": False, **(nc_kwargs or {})})


def _dense(model, dataset, indices, num_classes):
    batch = collate([dataset[int(i)] for i in indices])
    with torch.no_grad():
        feats = extract_features(model.eval(), batch["pixel_values"], layers=[])[FINAL]
    weight = hf_nc.LayerFeatures(model, layers=[]).backbone.classifier.weight.detach()
    return nc_metrics(feats, batch["labels"], num_classes=num_classes, classifier_weight=weight)


# ---------------------------------------------------------------------------------------------
# Item 4: 150 classes, 512 train-subset images: stratified, every class present, metrics defined
# ---------------------------------------------------------------------------------------------
MANY = [2] * 50 + [6] * 100  # 700 images of 150 classes; a plain random 512 misses a 2-image class


@pytest.fixture(scope="module")
def many():
    return _dataset(MANY)


def test_150_classes_train_subset_is_stratified_and_measured(many, tmp_path):
    model = _model(150)
    trainer = _trainer(model, tmp_path, many)
    idx = trainer.nc_train_indices()
    labels = np.asarray(many.with_format(None)["label"])[idx]
    counts = np.bincount(labels, minlength=150)
    assert len(idx) == 512 and len(set(idx)) == 512
    assert (counts[:50] == 2).all() and counts[50:].min() >= 512 // 150  # every class, at least its quota
    metrics = trainer.evaluate()
    want = _dense(model, many, idx, 150)
    for name in ("nc1", "nc2_etf", "nc3", "cdnv"):
        assert metrics[train_subset_key(name)] == pytest.approx(want[name], rel=1e-6), name


def test_150_classes_best_model_by_train_nc1_saves(many, tmp_path):
    """``metric_for_best_model="train_nc1"`` (the README's line) selects and saves, no KeyError."""
    trainer = _trainer(_model(150), tmp_path, many, max_steps=2, eval_strategy="steps", eval_steps=1,
                       save_strategy="steps", save_steps=1, metric_for_best_model="train_nc1", load_best_model_at_end=True)
    assert trainer.args.metric_for_best_model == TRAIN_SUBSET_NC1 and trainer.args.greater_is_better is False
    trainer.train()
    values = {r["step"]: r["train"]["nc1"] for r in trainer.nc_history}
    assert len(values) == 2 and all(math.isfinite(v) for v in values.values())
    assert trainer.state.best_metric == pytest.approx(min(values.values()))


# ---------------------------------------------------------------------------------------------
# Items 4, 11, 15: what cannot work is refused when the trainer is built
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nc_kwargs, match", [
    (dict(nc_train_samples=100), r"nc_train_samples=100 cannot hold one image of each of the 150 classes"),
    (dict(nc_num_classes=151), r"no images of class\(es\) \[150\] of nc_num_classes=151"),
    (dict(nc_num_classes=100), r"labels \[100, 101.*outside 0..99.*nc_num_classes is 100"),
    (dict(nc_layers=[99]), r"nc_layers=\[99\].*out of range"),
    (dict(nc_train_samples="512"), r"nc_train_samples must be an int or None"),
    (dict(nc_num_classes=0), r"num_classes must be at least 2 \(K >= 2\), got 0"),  # 0 used to mean "from the data" silently
    (dict(nc_train_samples=150), r"train subset \(150 images.*single sample"),  # logged NC1 = 0 at every evaluation
])
def test_bad_settings_fail_at_construction(many, tmp_path, nc_kwargs, match):
    with pytest.raises(ValueError, match=match):
        _trainer(_model(150), tmp_path, many, nc_kwargs=nc_kwargs)


def test_eval_labels_beyond_nc_num_classes_fail_at_construction(tmp_path):
    train, test = _dataset([4, 4, 4]), _dataset([4, 4, 4, 4])
    with pytest.raises(ValueError, match=r"eval_dataset has labels \[3\] outside 0..2"):
        _trainer(_model(3), tmp_path, train, test, nc_kwargs=dict(nc_num_classes=3, nc_train_samples=0))


def test_best_model_by_eval_nc_on_one_image_per_class_fails_at_construction(tmp_path):
    """A validation split of one image per class has NaN NC (no within-class variability to
    measure): selecting the best checkpoint by eval NC1 would compare NaNs, so it is refused;
    eval accuracy or the train subset's NC1 still select."""
    train, one_each = _dataset([4, 4, 4]), _dataset([1, 1, 1])
    best = dict(eval_strategy="steps", save_strategy="steps", load_best_model_at_end=True)
    for metric in ("nc1", "eval_cdnv"):
        with pytest.raises(ValueError, match=r"never logged.*single image in every class"):
            _trainer(_model(3), tmp_path, train, one_each, metric_for_best_model=metric, **best)
    for metric in ("train_nc1", "eval_accuracy"):
        _trainer(_model(3), tmp_path, train, one_each, metric_for_best_model=metric, **best)
    _trainer(_model(3), tmp_path, train, _dataset([2, 1, 1]), metric_for_best_model="nc1", **best)


def test_unsupported_model_fails_at_construction(tmp_path):
    model = tf.ResNetForImageClassification(tf.ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=3))
    with pytest.raises(ValueError, match="NCTrainer cannot measure NC of this model.*nc_eval=False and nc_train_samples=0"):
        _trainer(model, tmp_path, _dataset([4, 4, 4]))
    _trainer(model, tmp_path, _dataset([4, 4, 4]), nc_kwargs=dict(nc_eval=False, nc_train_samples=0))  # NC off: fine
    plain = torch.utils.data.TensorDataset(torch.zeros(4, 3, SIDE, SIDE), torch.zeros(4, dtype=torch.long))
    NCTrainer(model=model, args=_args(tmp_path), train_dataset=plain, nc_eval=False, nc_train_samples=0)  # no ClassLabel


@pytest.mark.parametrize("n, size", [(None, 18), (-1, 18), (0, 0), (12, 12), (100, 18)])
def test_nc_train_samples_semantics(tmp_path, n, size):
    """None or negative: all images; 0: no train-subset NC; n >= K: a stratified n (all when n >= N)."""
    data = _dataset([6, 6, 6])
    trainer = _trainer(_model(3), tmp_path, data, nc_kwargs=dict(nc_train_samples=n))
    assert len(trainer.nc_train_indices()) == size
    metrics = trainer.evaluate()
    assert (TRAIN_SUBSET_NC1 in metrics) == (size > 0) and "eval_nc1" in metrics
    if size:
        assert metrics[TRAIN_SUBSET_NC1] == pytest.approx(_dense(trainer.model, data, trainer.nc_train_indices(), 3)["nc1"], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Item 9: a diverged model logs NaN NC with a warning; training goes on
# ---------------------------------------------------------------------------------------------
class _Diverge(tf.TrainerCallback):
    """Puts NaN into the final norm after the second step (as a diverged run would)."""

    def __init__(self, model):
        self.model = model

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            with torch.no_grad():
                self.model.vit.layernorm.weight.fill_(float("nan"))


def test_nan_features_log_nan_and_training_goes_on(tmp_path, caplog):
    data = _dataset([6, 6, 6])
    model = _model(3)
    trainer = _trainer(model, tmp_path, data, max_steps=3, eval_strategy="steps", eval_steps=1,
                       nc_kwargs=dict(nc_layers=True, nc_ncc=True))
    trainer.add_callback(_Diverge(model))
    with caplog.at_level(logging.WARNING, logger="hf_nc.trainer.collect"):
        trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert [e["step"] for e in evals] == [1, 2, 3]
    assert math.isfinite(evals[0]["eval_nc1"]) and math.isfinite(evals[0][TRAIN_SUBSET_NC1])
    for e in evals[1:]:
        for key in ("eval_nc1", "eval_nc2_etf", "eval_nc3", "eval_cdnv", TRAIN_SUBSET_NC1, train_subset_key("ncc_acc")):
            assert math.isnan(e[key]), key
    # step 2: only the final norm is poisoned, the blocks before it are still measured; step 3: all NaN
    assert math.isfinite(evals[1]["eval_nc1_block3"]) and math.isfinite(evals[1][train_subset_key("nc1_block0")])
    assert math.isnan(evals[2]["eval_nc1_block0"]) and math.isnan(evals[2][train_subset_key("nc1_block3")])
    assert "not finite" in caplog.text and "the train subset" in caplog.text and "evaluation data" in caplog.text


# ---------------------------------------------------------------------------------------------
# Issue 10 §4: key names that transformers' card, TensorBoard and W&B read right
# ---------------------------------------------------------------------------------------------
def test_key_names_in_card_table_and_tensorboard(tmp_path):
    from transformers.integrations.integration_utils import rewrite_logs
    from transformers.modelcard import parse_log_history

    data = _dataset([6, 6, 6])
    trainer = _trainer(_model(3), tmp_path, data, max_steps=2, eval_strategy="steps", eval_steps=1)
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert "train_nc1" not in evals[-1] and TRAIN_SUBSET_NC1 in evals[-1]
    _, lines, final = parse_log_history(trainer.state.log_history)
    assert lines[-1]["Nc1"] == evals[-1]["eval_nc1"] and lines[-1]["Train Subset Nc1"] == evals[-1][TRAIN_SUBSET_NC1]
    assert final["Nc1"] == evals[-1]["eval_nc1"] and final["Train Subset Nc1"] == evals[-1][TRAIN_SUBSET_NC1]
    tb = rewrite_logs(evals[-1])
    assert tb["eval/train_subset_nc1"] == evals[-1][TRAIN_SUBSET_NC1] and tb["eval/nc1"] == evals[-1]["eval_nc1"]
    assert not any(k.startswith("train/") and "nc" in k for k in tb)  # only epoch/step stay there
    metrics = trainer.evaluate()
    assert metrics["train_nc1"] == metrics[TRAIN_SUBSET_NC1]  # the legacy alias, returned but not logged
    assert "train_nc1" not in trainer.state.log_history[-1]


def test_canonical_metric_names():
    assert TRAIN_SUBSET_PREFIX == "eval_train_subset" and TRAIN_SUBSET_NC1 == "eval_train_subset_nc1"
    for old in ("train_nc1", "eval_train_nc1", "train_subset_nc1", "eval_train_subset_nc1"):
        assert canonical_metric_name(old) == "eval_train_subset_nc1"
    assert canonical_metric_name("train_ncc_acc_block2") == "eval_train_subset_ncc_acc_block2"
    for keep in ("eval_nc1", "accuracy", "train_loss", "eval_loss", None):
        assert canonical_metric_name(keep) == keep


# ---------------------------------------------------------------------------------------------
# Issue 13 §2c: an unchanged model is not measured twice
# ---------------------------------------------------------------------------------------------
def test_train_subset_measured_once_per_evaluation(tmp_path):
    """One train-subset pass per evaluate(), also with a dict of eval sets; a later call measures the
    weights as they are then (here changed in place, as a user or a fused optimizer would)."""
    data = _dataset([6, 6, 6])
    model = _model(3)
    trainer = _trainer(model, tmp_path, data, test={"a": data, "b": data})
    calls = []
    handle = model.vit.embeddings.register_forward_hook(lambda *a: calls.append(a[2].shape[0]))
    first = trainer.evaluate()
    assert sum(calls) == 18 + 2 * 18  # the train subset once, each eval set once
    assert first["eval_a_nc1"] == pytest.approx(first[TRAIN_SUBSET_NC1], rel=1e-9)  # the same images
    with torch.no_grad():
        model.vit.layernorm.weight.mul_(torch.linspace(0.5, 1.5, 32))
    calls.clear()
    again = trainer.evaluate()
    handle.remove()
    assert sum(calls) == 3 * 18 and again[TRAIN_SUBSET_NC1] != first[TRAIN_SUBSET_NC1]
    assert again[TRAIN_SUBSET_NC1] == pytest.approx(_dense(model, data, range(18), 3)["nc1"], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Issue 13 §2c: the frozen prefix runs once over the train subset; cached == uncached
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, layers", [("scl", True), ("layer", True), ("scl", False)])
def test_train_subset_prefix_cache_equals_uncached(tmp_path, method, layers):
    from peft import get_peft_model

    data = _dataset([6, 7, 5])
    runs = {}
    for cached in (False, True):
        config = hf_nc.SCLConfig(layer=2) if method == "scl" else hf_nc.LayerFTConfig(layers=[2, 3])
        model = get_peft_model(_model(3), config)
        calls = []
        # block 0's attention runs only when block 0 really runs (the cache replaces the block by a pass-through)
        handle = model.base_model.model.vit.layers[0].attention.register_forward_hook(
            lambda m, a, o: calls.append(a[0].shape[0]))
        trainer = _trainer(model, tmp_path / str(cached), data, data, max_steps=3, eval_strategy="steps", eval_steps=1,
                           per_device_eval_batch_size=8, nc_kwargs=dict(nc_layers=layers, nc_ncc=True, nc_prefix_cache=cached))
        trainer.train()
        handle.remove()
        runs[cached] = ([r["train"] for r in trainer.nc_history], sum(calls), trainer)
    (plain, plain_calls, _), (fast, fast_calls, trainer) = runs[False], runs[True]
    assert trainer._nc_prefix is not None and trainer._nc_prefix.layout.block == 2
    for a, b in zip(plain, fast):
        assert set(a) == set(b) and set(a.get("blocks", {})) == ({"0", "1", "2", "3"} if layers else set())
        for key in ("nc1", "nc2_etf", "nc3", "cdnv", "ncc_acc"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-9), key
        for block, value in a.get("blocks", {}).items():
            assert b["blocks"][block] == pytest.approx(value, rel=1e-5), block
    # the 18 train-subset images, 2 passes (NC, NCC) per evaluation: uncached 3 x 2 x 18 through block 0; cached
    # only the first evaluation's NC pass (it measures every block and grabs the rows at the cut: no separate
    # cache build; its NCC pass already runs from the rows), then none
    assert plain_calls - fast_calls == 3 * 2 * 18 - 18


# ---------------------------------------------------------------------------------------------
# A second train(), the collator's extra inputs, a final evaluate() after load-best
# ---------------------------------------------------------------------------------------------
def test_second_train_call_measures_the_train_subset_afresh(tmp_path):
    # global_step restarts at 0 in every train(): the same step used to reuse the first run's numbers
    train = _dataset([8, 8, 8], seed=0)
    model = _model(3)
    t = _trainer(model, tmp_path, train, _dataset([4, 4, 4], seed=1), nc_kwargs={"nc_train_samples": None},
                 num_train_epochs=1, eval_strategy="epoch", learning_rate=3e-2)
    t.train()
    t.train()
    last = [e for e in t.state.log_history if TRAIN_SUBSET_NC1 in e][-1]
    want = _dense(model, train, range(len(train)), 3)["nc1"]
    assert last[TRAIN_SUBSET_NC1] == pytest.approx(float(want), rel=1e-4)


def test_train_subset_pass_gets_the_collators_other_inputs(tmp_path):
    # 2x the model's image size needs interpolate_pos_encoding, which the collator adds: the Trainer
    # passes it; the train-subset pass used to drop it and fail at the first evaluation
    train, test = _dataset([6, 6], seed=0, side=2 * SIDE), _dataset([3, 3], seed=1, side=2 * SIDE)

    def interpolating(items):
        return {**collate(items), "interpolate_pos_encoding": True}

    t = NCTrainer(model=_model(2), args=_args(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=2), train_dataset=train,
                  eval_dataset=test, data_collator=interpolating, nc_train_samples=None, nc_plots=False)
    t.train()
    assert math.isfinite([e for e in t.state.log_history if TRAIN_SUBSET_NC1 in e][-1][TRAIN_SUBSET_NC1])


def test_final_evaluate_keeps_the_training_curve(tmp_path):
    # load_best_model_at_end loads step 2's weights; the evaluate() after train() (the recipes do it) is at
    # global_step 6 and used to overwrite step 6's record with the best model's numbers
    train, test = _dataset([8, 8, 8], seed=0), _dataset([4, 4, 4], seed=1)
    t = _trainer(_model(3), tmp_path, train, test, nc_kwargs={"nc_train_samples": 12}, max_steps=6, eval_strategy="steps",
                 eval_steps=2, save_strategy="steps", save_steps=2, load_best_model_at_end=True, metric_for_best_model="eval_nc1",
                 learning_rate=1e-2)
    t.train()
    logged = {e["step"]: e["eval_nc1"] for e in t.state.log_history if "eval_nc1" in e}
    t.evaluate()
    assert {r["step"]: r["eval"]["nc1"] for r in t.nc_history} == pytest.approx(logged)
    saved = json.loads((tmp_path / "nc_history.json").read_text())["records"]
    assert {r["step"]: r["eval"]["nc1"] for r in saved} == pytest.approx(logged)


def test_per_block_nc_below_cached_rows_is_refused(tmp_path):
    # blocks below the cached one are skipped on PrefixCache rows: each used to report the cached block's NC1
    from peft import get_peft_model

    from hf_nc import LayerFTConfig, PrefixCache

    train = _dataset([6, 6, 6], seed=0)
    model = get_peft_model(_model(3), LayerFTConfig(layers=[-1]))
    cache = PrefixCache.build(model, train, collate, batch_size=8, progress=False)
    cache.attach(model)
    last = hf_nc.LayerFeatures(model, layers=[]).backbone.num_layers - 1
    with pytest.raises(ValueError, match=rf"PrefixCache of block {last - 1}'s output, so the blocks below it \(\[0, "):
        NCTrainer(model=model, args=_args(tmp_path), train_dataset=cache, eval_dataset=cache, data_collator=collate,
                  nc_train_dataset=cache, nc_layers=True, nc_plots=False)
    t = NCTrainer(model=model, args=_args(tmp_path), train_dataset=cache, eval_dataset=cache, data_collator=collate,
                  nc_train_dataset=cache, nc_layers=[last - 1, last], nc_plots=False)
    assert math.isfinite(t.evaluate()[f"eval_nc1_block{last - 1}"])


@pytest.mark.parametrize("metric, kwargs, why", [
    ("eval_ncc_acc", {}, "NCC accuracy is measured on the train subset only"),
    ("eval_nc1_block1", {}, "block 1 is not among nc_layers"),
    ("eval_train_subset_ncc_acc", {}, "nc_ncc=False"),
    ("eval_nc1", {"nc_eval": False}, "nc_eval=False"),
    ("train_nc1", {"nc_train_samples": 0}, "the train subset is not measured"),
])
def test_best_metric_never_logged_fails_when_the_trainer_is_built(tmp_path, metric, kwargs, why):
    # it used to fail with transformers' KeyError at the first evaluation, after training had started
    train = _dataset([4, 4], seed=0)
    with pytest.raises(ValueError, match=rf"metric_for_best_model='{metric}' is never logged with these settings: {why}"):
        _trainer(_model(2), tmp_path, train, nc_kwargs=kwargs, metric_for_best_model=metric)
    fixed = {"eval_ncc_acc": ("eval_train_subset_ncc_acc", {"nc_ncc": True}), "eval_nc1_block1": (metric, {"nc_layers": [1]}),
             "eval_train_subset_ncc_acc": (metric, {"nc_ncc": True}), "eval_nc1": (metric, {}), "train_nc1": (metric, {})}[metric]
    t = _trainer(_model(2), tmp_path, train, nc_kwargs=fixed[1], metric_for_best_model=fixed[0], max_steps=1,
                 eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1, load_best_model_at_end=True)
    t.train()  # the metric is there at the first evaluation
    assert t.state.best_metric is not None


def test_model_swapped_between_evaluations_gets_its_own_prefix_rows(tmp_path):
    # the train subset's cached prefix rows (and frozen-block NC) used to be reused for a model swapped in
    # with the same cut but other frozen weights
    from peft import get_peft_model

    from hf_nc import LayerFTConfig

    train = _dataset([8, 8, 8], seed=0)

    def peft(seed):
        return get_peft_model(_model(3, seed=seed), LayerFTConfig(layers=[-1]))

    t = _trainer(peft(0), tmp_path, train, nc_kwargs={"nc_train_samples": None, "nc_layers": True})
    t.evaluate()
    other = peft(1)
    t.model = other
    swapped = t.evaluate()
    fresh = _trainer(peft(1), tmp_path / "fresh", train, nc_kwargs={"nc_train_samples": None, "nc_layers": True}).evaluate()
    keys = [k for k in fresh if k.startswith(TRAIN_SUBSET_PREFIX + "_nc1")]
    assert len(keys) > 2 and {k: swapped[k] for k in keys} == pytest.approx({k: fresh[k] for k in keys}, rel=1e-5)
    assert swapped[TRAIN_SUBSET_NC1] == pytest.approx(float(_dense(other, train, range(len(train)), 3)["nc1"]), rel=1e-4)


@pytest.mark.parametrize("peft", [False, True])
def test_setting_the_train_subset_data_or_size_after_construction_redraws_it(tmp_path, peft):
    # trainer.nc_train_dataset = ... / trainer.nc_train_samples = ... used to keep the old subset, its cached
    # batches and prefix rows: later evaluations silently measured the old images
    from peft import get_peft_model

    from hf_nc import LayerFTConfig

    old, new = _dataset([8, 8, 8], seed=0), _dataset([8, 8, 8], seed=1)
    model = _model(3)
    if peft:
        model = get_peft_model(model, LayerFTConfig(layers=[-1]))
    t = _trainer(model, tmp_path, old, nc_kwargs={"nc_train_samples": 12})
    assert t.evaluate()[TRAIN_SUBSET_NC1] == pytest.approx(float(_dense(model, old, t.nc_train_indices(), 3)["nc1"]), rel=1e-5)
    t.nc_train_dataset = new
    idx = t.nc_train_indices()
    assert len(idx) == 12 and np.bincount(np.asarray(new.with_format(None)["label"])[idx], minlength=3).tolist() == [4, 4, 4]
    assert t.evaluate()[TRAIN_SUBSET_NC1] == pytest.approx(float(_dense(model, new, idx, 3)["nc1"]), rel=1e-5)
    t.nc_train_samples = None
    assert t.nc_train_indices() == list(range(len(new)))
    assert t.evaluate()[TRAIN_SUBSET_NC1] == pytest.approx(float(_dense(model, new, range(len(new)), 3)["nc1"]), rel=1e-5)
    with pytest.raises(ValueError, match="nc_train_samples=2 cannot hold one image of each of the 3 classes"):
        t.nc_train_samples = 2
    # the refused size is not kept: the previous subset is still drawn and measured
    assert t.nc_train_samples is None and t.nc_train_indices() == list(range(len(new)))
    assert t.evaluate()[TRAIN_SUBSET_NC1] == pytest.approx(float(_dense(model, new, range(len(new)), 3)["nc1"]), rel=1e-5)


def test_labels_remapped_by_the_transform_are_the_ones_counted(tmp_path):
    # a class subset renumbered in with_transform (raw ClassLabel ids 3, 7, 9 -> labels 0, 1, 2): the raw column
    # used to be read as the labels, so nc_num_classes came out 10 and a valid trainer was refused ("no images of
    # class(es) [0, 1, 2, 4, ...]"), or with nc_num_classes=3 "labels [3, 7, 9] outside 0..2"
    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    base = _dataset([8, 8, 8], seed=0)
    raw = base.with_format(None)
    ids = np.asarray([3, 7, 9])[np.asarray(raw["label"])]
    data = Dataset.from_dict({"pixels": raw["pixels"], "label": ids.tolist()},
                             features=Features({"pixels": Sequence(Value("float32")), "label": ClassLabel(num_classes=10)}))
    remap = {3: 0, 7: 1, 9: 2}
    data = data.with_transform(lambda b: {"pixel_values": [torch.tensor(p).view(3, SIDE, SIDE) for p in b["pixels"]],
                                          "labels": [remap[v] for v in b["label"]]})
    model = _model(3)
    t = _trainer(model, tmp_path, data, nc_kwargs={"nc_train_samples": 12})
    assert t.nc_num_classes == 3
    idx = t.nc_train_indices()
    assert np.bincount([data[i]["labels"] for i in idx], minlength=3).tolist() == [4, 4, 4]  # stratified on the real labels
    metrics = t.evaluate()
    assert metrics[TRAIN_SUBSET_NC1] == pytest.approx(float(_dense(model, data, idx, 3)["nc1"]), rel=1e-5)
    assert metrics["eval_nc1"] == pytest.approx(float(_dense(model, data, range(len(data)), 3)["nc1"]), rel=1e-5)


def test_augmented_train_subset_data_is_warned_about(tmp_path):
    # without nc_train_dataset the train subset is train_dataset: with augmentation its NC silently measured one
    # random draw per image (kept by the batch cache for every later evaluation)
    import warnings

    from datasets import ClassLabel, Dataset, Features, Image as ImageFeature
    from PIL import Image

    from hf_nc.data import collate_fn

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)) for _ in range(12)]
    ds = Dataset.from_dict({"image": images, "label": [0, 1, 2] * 4},
                           features=Features({"image": ImageFeature(), "label": ClassLabel(num_classes=3)}))
    model = _model(3)
    augmented = ds.with_transform(hf_nc.build_transforms(model, train=True, augment="flip"))
    plain = ds.with_transform(hf_nc.build_transforms(model, train=False))
    with pytest.warns(UserWarning, match=r"train-subset NC data .* applies random augmentation \(flip\)"):
        NCTrainer(model=model, args=_args(tmp_path), train_dataset=augmented, eval_dataset=plain, data_collator=collate_fn)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*random augmentation.*")
        NCTrainer(model=model, args=_args(tmp_path), train_dataset=augmented, eval_dataset=plain, data_collator=collate_fn,
                  nc_train_dataset=plain)


def test_prefix_cache_data_without_attaching_the_model_fails_when_the_trainer_is_built(tmp_path):
    # it used to fail at the first training step inside transformers: "not enough values to unpack (expected 4, got 3)"
    from peft import get_peft_model

    from hf_nc import LayerFTConfig, PrefixCache

    train = _dataset([4, 4, 4], seed=0)
    model = get_peft_model(_model(3), LayerFTConfig(layers=[-1]))
    cache = PrefixCache.build(model, train, collate, batch_size=8, progress=False)
    for kw in (dict(train_dataset=cache, eval_dataset=train), dict(train_dataset=train, eval_dataset={"val": cache})):
        with pytest.raises(ValueError, match=r"is a PrefixCache \(rows entering block 3\), but the model is not attached to it: "
                                             r"call cache.attach\(model\)"):
            NCTrainer(model=model, args=_args(tmp_path, max_steps=1), data_collator=collate, nc_plots=False, **kw)
    cache.attach(model)
    t = NCTrainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=cache, eval_dataset=train, data_collator=collate,
                  nc_plots=False)
    t.train()
    assert math.isfinite(t.evaluate()["eval_nc1"])


def test_setting_nc_layers_or_num_classes_after_construction_is_checked_and_drops_stale_blocks(tmp_path):
    # trainer.nc_layers = ... kept the frozen blocks' NC1 of the first pass (blocks no longer asked for were
    # still reported), nc_layers=False failed at the next evaluate() ('bool' object is not iterable), a bad
    # block or a wrong nc_num_classes was accepted and failed or gave NaN only at the next evaluation
    from peft import get_peft_model

    from hf_nc import LayerFTConfig

    train = _dataset([8, 8, 8], seed=0)
    model = get_peft_model(_model(3), LayerFTConfig(layers=[-1]))
    t = _trainer(model, tmp_path, train, nc_kwargs={"nc_train_samples": 12, "nc_layers": "all"})
    first = t.evaluate()
    blocks = [k for k in first if k.startswith(TRAIN_SUBSET_NC1 + "_block")]
    assert len(blocks) == 4
    t.nc_layers = False
    assert t.nc_layers == []
    later = t.evaluate()
    assert not [k for k in later if "_block" in k]
    assert later[TRAIN_SUBSET_NC1] == pytest.approx(first[TRAIN_SUBSET_NC1], rel=1e-6)
    with pytest.raises(ValueError, match=r"nc_layers=\[99\]"):
        t.nc_layers = [99]
    assert t.nc_layers == []  # the refused value is not kept
    with pytest.raises(ValueError, match="no images of class"):
        t.nc_num_classes = 5
    assert t.nc_num_classes == 3
    t.nc_layers = [1]
    assert [k for k in t.evaluate() if k.startswith(TRAIN_SUBSET_NC1 + "_block")] == [TRAIN_SUBSET_NC1 + "_block1"]


def test_switching_eval_nc_off_after_construction_checks_metric_for_best_model(tmp_path):
    train = _dataset([8, 8, 8], seed=0)
    t = _trainer(_model(3), tmp_path, train, nc_kwargs={"nc_train_samples": 12}, metric_for_best_model="eval_nc1",
                 eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True)
    with pytest.raises(ValueError, match="metric_for_best_model='eval_nc1' is never logged.*nc_eval=False"):
        t.nc_eval = False
    assert t.nc_eval is True


def test_setting_nc_cache_mb_after_construction_is_the_budget_from_then_on(tmp_path):
    # trainer.nc_cache_mb = 0 kept the batches cached under the old budget (and the rows' budget), and a
    # later redraw (nc_train_samples = ...) put the construction-time value back
    train = _dataset([8, 8, 8], seed=0)
    model = _model(3)  # every block trained: no frozen prefix, the images' batches are what is cached
    t = _trainer(model, tmp_path, train, nc_kwargs={"nc_train_samples": 12, "nc_cache_mb": 256})
    first = t.evaluate()[TRAIN_SUBSET_NC1]
    assert t.nc_train_subset._batches is not None
    t.nc_cache_mb = 0
    assert t.nc_train_subset._batches is None
    assert t.evaluate()[TRAIN_SUBSET_NC1] == pytest.approx(first, rel=1e-6)
    assert t.nc_train_subset._batches is None  # nothing cached within a budget of 0
    t.nc_train_samples = 15
    assert t.nc_cache_mb == 0
    assert t.evaluate()[TRAIN_SUBSET_NC1] == pytest.approx(float(_dense(model, train, t.nc_train_indices(), 3)["nc1"]), rel=1e-5)
    assert t.nc_train_subset._batches is None


def test_setting_nc_train_every_after_construction_is_checked(tmp_path):
    # nc_train_every = 0 was accepted and failed at the first evaluation in training (modulo by zero); 2 with a
    # train-subset metric_for_best_model (refused at construction) was accepted too
    train = _dataset([8, 8, 8], seed=0)
    t = _trainer(_model(3), tmp_path, train, nc_kwargs={"nc_train_samples": 12}, metric_for_best_model="train_nc1",
                 eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True)
    with pytest.raises(ValueError, match="nc_train_every must be a positive int"):
        t.nc_train_every = 0
    with pytest.raises(ValueError, match="needs the train subset at every evaluation"):
        t.nc_train_every = 2
    assert t.nc_train_every == 1
    plain = _trainer(_model(3), tmp_path / "plain", train, nc_kwargs={"nc_train_samples": 12})
    plain.nc_train_every = 3
    assert plain.nc_train_every == 3


def test_prefix_cache_built_under_other_mixed_precision_is_refused(tmp_path):
    # a float32 cache in a bf16 run (or the reverse) fed the tuned block other states than its prefix
    # computes in that run, silently: the trainer now names the mismatch and the fix
    from peft import get_peft_model

    from hf_nc import LayerFTConfig, PrefixCache

    train = _dataset([4, 4, 4], seed=0)
    model = get_peft_model(_model(3), LayerFTConfig(layers=[-1]))
    plain = PrefixCache.build(model, train, collate, batch_size=8, progress=False)
    amp = PrefixCache.build(model, train, collate, batch_size=8, progress=False, autocast_dtype=torch.bfloat16)
    assert plain.layout == amp.layout  # the same rows' shape: attaching one serves both
    plain.attach(model)
    for cache, bf16, message in ((plain, True, r"built without autocast, but this Trainer runs under bfloat16 autocast .*"
                                                r"autocast_dtype=torch.bfloat16\)"),
                                 (amp, False, r"built under bfloat16 autocast, but this Trainer runs without autocast .*"
                                              r"autocast_dtype=None\)")):
        for kw in (dict(train_dataset=cache, eval_dataset=train), dict(train_dataset=train, eval_dataset={"val": cache})):
            with pytest.raises(ValueError, match=r"is a PrefixCache " + message):
                NCTrainer(model=model, args=_args(tmp_path, max_steps=1, bf16=bf16), data_collator=collate, nc_plots=False, **kw)
    t = NCTrainer(model=model, args=_args(tmp_path, max_steps=1, bf16=True), train_dataset=amp, eval_dataset=train,
                  data_collator=collate, nc_plots=False)
    t.train()
    assert math.isfinite(t.evaluate()["eval_nc1"])


def test_frozen_weights_changed_after_attach_are_refused_before_training(tmp_path):
    # attach() checked the frozen weights once: weights loaded or changed afterwards (another checkpoint, an
    # in-place edit) trained the tuned block on rows its prefix no longer computes, silently
    from peft import get_peft_model

    from hf_nc import LayerFTConfig, PrefixCache
    from hf_nc.backbones import resolve_backbone

    train = _dataset([4, 4, 4], seed=0)
    model = get_peft_model(_model(3), LayerFTConfig(layers=[-1]))
    cache = PrefixCache.build(model, train, collate, batch_size=8, progress=False)
    cache.attach(model)
    t = NCTrainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=cache, eval_dataset=train, data_collator=collate,
                  nc_plots=False)
    weight = resolve_backbone(model).blocks[0].attention.q_proj.weight
    with torch.no_grad():
        weight.mul_(1.01)
    message = r"train_dataset: the cache was built with other frozen weights than this model's .*q_proj"
    with pytest.raises(ValueError, match=message):
        t.train()
    with pytest.raises(ValueError, match=message):
        NCTrainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=cache, eval_dataset=train, data_collator=collate,
                  nc_plots=False)
    with torch.no_grad():
        weight.div_(1.01)
    t.train()  # the same weights again (up to rounding): trains
