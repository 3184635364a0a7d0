"""NCTrainer: metrics equal an offline recomputation, NC best-model selection, history across resume."""

import json
import shutil

import pytest
import torch
from tiny_models import LAYERS, build_tiny_model
from transformers import TrainingArguments

import hf_nc
from hf_nc.data import build_transforms, collate_fn, load_image_dataset
from hf_nc.features import FINAL, extract_features
from hf_nc.metrics import nc_metrics
from hf_nc.trainer import TRAIN_SUBSET_NC1, TRAIN_SUBSET_PREFIX, NCTrainer, metric_direction, read_history

CLASSES = [0, 1, 2]  # the tiny models have 3 labels


@pytest.fixture(scope="module")
def digits():
    data = load_image_dataset("digits", classes=CLASSES, shots_per_class=12, seed=0)
    return data["train"], data["test"].select(range(45))


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=16, remove_unused_columns=False,
                report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no", learning_rate=5e-3, seed=0)
    base.update(kw)
    return TrainingArguments(**base)


def _trainer(model, tmp_path, digits, nc_train_samples=20, nc_layers=True, nc_plots=True, **kw):
    train, test = digits
    transform = build_transforms(build_tiny_model("vit_cls"), train=False)
    return NCTrainer(model=model, args=_args(tmp_path, **kw), train_dataset=train.with_transform(transform),
                     eval_dataset=test.with_transform(transform), data_collator=collate_fn,
                     nc_train_samples=nc_train_samples, nc_layers=nc_layers, nc_plots=nc_plots)


def _features(model, dataset):
    batch = collate_fn([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        return extract_features(model.eval(), batch["pixel_values"]), batch["labels"]


def _model(kind):
    model = build_tiny_model("vit_cls")
    if kind == "scl":
        from peft import get_peft_model

        return get_peft_model(model, hf_nc.SCLConfig(layer=-2))
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"]))
    return model


@pytest.mark.parametrize("kind", ["plain", "scl", "lora"])
def test_metrics_equal_offline_recomputation(kind, digits, tmp_path):
    model = _model(kind)
    trainer = _trainer(model, tmp_path, digits, max_steps=2)
    trainer.train()  # two steps, so the PEFT parts are no longer at their identity init
    metrics = trainer.evaluate()
    classifier = hf_nc.LayerFeatures(model, layers=[]).backbone.classifier
    weight = classifier.weight.detach()
    train_subset = trainer.nc_train_dataset.select(trainer.nc_train_indices())
    assert len(train_subset) == 20
    for prefix, dataset in (("eval", trainer.eval_dataset), (TRAIN_SUBSET_PREFIX, train_subset)):
        feats, labels = _features(model, dataset)
        want = nc_metrics(feats[FINAL], labels, num_classes=3, classifier_weight=weight)
        for name in ("nc1", "nc2_etf", "nc2_equinorm", "nc2_equiangle", "nc3", "cdnv"):
            assert metrics[f"{prefix}_{name}"] == pytest.approx(want[name], rel=1e-6), (prefix, name)
        for block in range(LAYERS):
            want_block = nc_metrics(feats[block], labels, num_classes=3)["nc1"]
            assert metrics[f"{prefix}_nc1_block{block}"] == pytest.approx(want_block, rel=1e-6), (prefix, block)
    logged = [e for e in trainer.state.log_history if "eval_nc1" in e][-1]
    assert logged[TRAIN_SUBSET_NC1] == metrics[TRAIN_SUBSET_NC1] and logged["eval_nc2_etf"] == metrics["eval_nc2_etf"]
    assert metrics["train_nc1"] == metrics[TRAIN_SUBSET_NC1]  # legacy alias, returned by evaluate() only


def test_metric_for_best_model_train_nc1_loads_the_minimum(digits, tmp_path):
    trainer = _trainer(build_tiny_model("vit_cls"), tmp_path, digits, nc_layers=False, max_steps=4, eval_strategy="steps",
                       eval_steps=1, save_strategy="steps", save_steps=1, metric_for_best_model="train_nc1",
                       load_best_model_at_end=True, learning_rate=2e-2)
    assert trainer.args.greater_is_better is False  # TrainingArguments would default to True
    trainer.train()
    values = {r["step"]: r["train"]["nc1"] for r in trainer.nc_history}
    best_step = min(values, key=values.get)
    assert len(values) == 4 and len(set(values.values())) == 4
    assert trainer.state.best_metric == pytest.approx(values[best_step])
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best_step}")
    assert trainer.evaluate()["train_nc1"] == pytest.approx(values[best_step], rel=1e-6)  # the best weights are loaded


def test_metric_direction():
    assert metric_direction("train_nc1") is False and metric_direction("eval_nc2_etf") is False
    assert metric_direction("eval_train_ncc_acc") is True and metric_direction("train_nc1_block3") is False
    assert metric_direction("eval_train_subset_nc1") is False and metric_direction("eval_train_subset_ncc_acc") is True
    assert metric_direction("accuracy") is None and metric_direction("loss") is None and metric_direction(None) is None


def test_history_survives_resume(digits, tmp_path):
    kw = dict(max_steps=4, eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=2)
    first = _trainer(build_tiny_model("vit_cls"), tmp_path, digits, **kw)
    first.train()
    full = read_history(tmp_path)
    assert [r["step"] for r in full] == [1, 2, 3, 4]
    assert read_history(tmp_path / "checkpoint-2") == full[:2]
    assert (tmp_path / "nc1_history.png").stat().st_size > 1000 and (tmp_path / "nc1_per_layer.png").stat().st_size > 1000

    shutil.rmtree(tmp_path / "checkpoint-4")  # resume_from_checkpoint=True then picks checkpoint-2
    (tmp_path / "nc_history.json").write_text(json.dumps({"records": full + [{"step": 99, "epoch": 9, "eval": {"nc1": 1.0}}]}))
    resumed = _trainer(build_tiny_model("vit_cls", seed=5), tmp_path, digits, **kw)
    resumed.train(resume_from_checkpoint=True)
    again = read_history(tmp_path)
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    assert again[:2] == full[:2]
    for old, new in zip(full[2:], again[2:]):  # same weights, data order and RNG after the resume
        assert new["train"]["nc1"] == pytest.approx(old["train"]["nc1"], rel=1e-4)

    (tmp_path / "checkpoint-2" / "nc_history.json").unlink()  # a checkpoint without history: truncated output_dir copy
    third = _trainer(build_tiny_model("vit_cls"), tmp_path, digits, **kw)
    third.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert [r["step"] for r in third.nc_history] == [1, 2, 3, 4] and third.nc_history[:2] == full[:2]
