"""Block-level selection: the NC1-slope rule, few-step trials (``rule="few_steps"``) against a
plain training loop, and the block benchmark's ``--quick`` mode against its ground truth."""

import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import DatasetDict
from test_selection import K, constant_images
from tiny_models import LAYERS, build_tiny_model

from hf_nc.selection import (BlockTrial, choose_block_by_score, choose_block_by_trials, few_step_trials, nc1_slopes,
                             suggest_layer)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def splits():
    return DatasetDict(train=constant_images(8, seed=0), validation=constant_images(6, seed=2), test=constant_images(4, seed=1))


def test_nc1_slopes_and_the_slope_rule():
    curve = [10.0, 1.0, 0.5, 0.05, 0.04]
    slopes = nc1_slopes(curve)
    expected = [math.log10(1.0) - math.log10(10.0)] + [math.log10(curve[b]) - math.log10(curve[b - 1]) for b in range(1, 5)]
    assert slopes == pytest.approx(expected)
    # the steepest drop: block 0 and 1 both fall by a decade, block 3 by a decade too: ties go to the later block
    s = choose_block_by_score(slopes, "nc1_slope", "layer")
    assert s.block == 3 and "slope" in s.rule
    assert choose_block_by_score(nc1_slopes([8.0, 4.0, 0.4, 0.3]), "nc1_slope").block == 2
    assert math.isnan(nc1_slopes([1.0, math.nan, 0.5])[1]) and math.isnan(nc1_slopes([1.0, math.nan, 0.5])[2])
    assert len(nc1_slopes([2.0])) == 1 and math.isnan(nc1_slopes([2.0])[0])


def _reference_trial(model, train, validation, block, steps, run_steps, lr, seed, batch_size=4):
    """Independent of the adapters and the prefix cache: a copy of the plain model with every
    parameter frozen but block ``block`` and the classifier, AdamW, the Trainer's cosine schedule,
    batches from ``torch.randperm`` with the same generator."""
    from transformers import get_cosine_schedule_with_warmup

    from hf_nc.data import build_transforms, collate_fn

    net = copy.deepcopy(model)
    net.requires_grad_(False)
    net.vit.layers[block].requires_grad_(True)
    net.classifier.requires_grad_(True)
    t = build_transforms(model, train=False)
    tr = collate_fn([*train.with_transform(t)])
    va = collate_fn([*validation.with_transform(t)])
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(0.05 * run_steps), run_steps)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    step = 0
    while step < steps:
        order = torch.randperm(len(tr["labels"]), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = net(pixel_values=tr["pixel_values"][idx], labels=tr["labels"][idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step >= steps:
                break
    net.eval()
    with torch.no_grad():
        logits = net(pixel_values=va["pixel_values"]).logits
    return float((logits.argmax(-1) == va["labels"]).float().mean()), float(torch.nn.functional.cross_entropy(logits, va["labels"]))


@pytest.mark.parametrize("block", [0, LAYERS - 1])
def test_few_step_trials_equal_a_plain_training_loop(splits, block):
    model = build_tiny_model("vit_cls")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = dict(method="layer", blocks=[block], steps=7, eval_steps=[3, 7], run_steps=20, learning_rate=1e-2, batch_size=4, seed=3)
    (cached,) = few_step_trials(model, splits["train"], splits["validation"], **kw)
    (plain,) = few_step_trials(model, splits["train"], splits["validation"], prefix_cache=False, **kw)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the argument is not trained
    assert cached.prefix_cache and not plain.prefix_cache and cached.steps == [3, 7]
    assert cached.validation_loss == pytest.approx(plain.validation_loss, rel=1e-5)  # the cache is exact
    acc, loss = _reference_trial(model, splits["train"], splits["validation"], block, 7, 20, 1e-2, 3)
    assert cached.validation_loss[-1] == pytest.approx(loss, rel=1e-4) and cached.validation_accuracy[-1] == pytest.approx(acc)
    # the loss moved: 7 steps at this LR change the model
    from hf_nc.data import build_transforms

    with torch.no_grad():
        pixels = torch.stack([x["pixel_values"] for x in splits["validation"].with_transform(build_transforms(model, train=False))])
        untrained = torch.nn.functional.cross_entropy(model.eval()(pixel_values=pixels).logits, torch.as_tensor(splits["validation"]["label"]))
    assert abs(cached.validation_loss[-1] - float(untrained)) > 1e-3


def test_few_step_trials_arguments_and_scl(splits):
    model = build_tiny_model("vit_cls")
    trials = few_step_trials(model, splits["train"], splits["validation"], method="scl", steps=2, batch_size=8)
    assert [t.block for t in trials] == list(range(LAYERS - 1))  # SCL: every block below the last
    assert all(len(t.validation_accuracy) == 1 and 0 <= t.validation_accuracy[0] <= 1 and t.seconds > 0 for t in trials)
    with pytest.raises(ValueError, match="cannot be tuned"):
        few_step_trials(model, splits["train"], splits["validation"], method="scl", blocks=[LAYERS - 1], steps=1)
    with pytest.raises(ValueError, match="eval_steps"):
        few_step_trials(model, splits["train"], splits["validation"], steps=2, eval_steps=[3])
    with pytest.raises(ValueError, match="run_steps"):
        few_step_trials(model, splits["train"], splits["validation"], steps=5, run_steps=4)
    with pytest.raises(ValueError, match=r"run_steps \(0\) must be >= steps"):
        few_step_trials(model, splits["train"], splits["validation"], steps=5, run_steps=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):  # was "range() arg 3 must not be zero"
        few_step_trials(model, splits["train"], splits["validation"], steps=1, batch_size=0)
    with pytest.raises(ValueError, match="the validation split has no images"):  # was "stack expects a non-empty TensorList"
        few_step_trials(model, splits["train"], splits["validation"].select([]), steps=1)
    with pytest.raises(ValueError, match="blocks applies to rule='few_steps' only"):  # was silently ignored
        suggest_layer(model, splits, rule="nc1", blocks=[0], progress=False)
    with pytest.raises(ValueError, match="num_classes must be at least 2"):  # 0 used to mean "from the data"
        suggest_layer(model, splits, num_classes=0, progress=False)


def test_choose_block_by_trials_accuracy_then_loss():
    t = [BlockTrial(0, [5], [0.5], [1.0], 1.0, True), BlockTrial(1, [5], [0.7], [0.9], 1.0, True),
         BlockTrial(2, [5], [0.7], [0.8], 1.0, True)]
    s = choose_block_by_trials(t, "layer")
    assert s.block == 2 and s.extra["rule"] == "few_steps" and len(s.extra["trials"]) == 3  # tie on accuracy: lower loss
    with pytest.raises(ValueError):
        choose_block_by_trials([])


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 0, 2)])
def test_choose_block_by_trials_never_prefers_a_diverged_trial(order):
    # a NaN loss compares false both ways, so an accuracy tie went to whichever trial came first
    nan = float("nan")
    trials = {0: BlockTrial(0, [5], [0.5], [nan], 1.0, True), 1: BlockTrial(1, [5], [0.5], [1.2], 1.0, True),
              2: BlockTrial(2, [5], [nan], [0.1], 1.0, True)}
    assert choose_block_by_trials([trials[b] for b in order], "layer").block == 1
    with pytest.raises(ValueError, match="no trial has a finite validation accuracy"):
        choose_block_by_trials([trials[2]])


def test_suggest_layer_few_steps_reads_validation_never_test(splits):
    model = build_tiny_model("vit_cls")
    poisoned = DatasetDict(train=splits["train"], validation=splits["validation"],
                           test=splits["test"].map(lambda e: {"label": (e["label"] + 1) % K}))
    a = suggest_layer(model, splits, rule="few_steps", method="layer", steps=3, train_batch_size=8, progress=False)
    b = suggest_layer(model, poisoned, rule="few_steps", method="layer", steps=3, train_batch_size=8, progress=False)
    assert a.block == b.block and a.extra["trials"] == [{**t, "seconds": u["seconds"]} for t, u in zip(b.extra["trials"], a.extra["trials"])]
    assert 0 <= a.block < LAYERS and len(a.extra["trials"]) == LAYERS
    # the model's labels (LABEL_0..2) differ from the data's: the head is re-initialised, seeded, on a copy
    head = model.classifier.weight.clone()
    suggest_layer(model, splits, rule="few_steps", method="layer", steps=1, blocks=[0], progress=False)
    assert torch.equal(model.classifier.weight, head)
    wrong = build_tiny_model("vit_cls")
    wrong.classifier = torch.nn.Linear(wrong.classifier.in_features, K + 1)
    with pytest.raises(ValueError, match="outputs"):
        suggest_layer(wrong, splits, rule="few_steps", steps=1, progress=False)
    s = suggest_layer(model, splits, rule="nc1_slope", method="scl", progress=False)
    assert 0 <= s.block < LAYERS - 1 and s.block == choose_block_by_score(nc1_slopes(s.nc1_per_layer)[: LAYERS - 1], "nc1_slope").block


# ---------------------------------------------------------------------------------------- the benchmark
@pytest.mark.slow
def test_block_benchmark_quick(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import transferability as bench

    from hf_nc.selection import scores as S

    out = bench.main(["--quick", "--json", str(tmp_path / "t.json")])
    printed = capsys.readouterr().out
    json.loads((tmp_path / "t.json").read_text())  # strict JSON (no NaN)
    summary = out["summary"]
    assert set(summary["correlations"]) == {"tiny/digits/10 / layer_ft", "tiny/digits/10 / scl_ft", "tiny/digits/10 / probe"}
    for case, rows in summary["correlations"].items():
        assert set(S.SCORES) | {"nc1_slope"} <= set(rows), case
        for name, r in rows.items():
            assert -1 <= r["kendall_tau"] <= 1 and r["top1_regret_points"] >= 0, (case, name)
    # every rule's accuracy is the study's own fine-tuned test accuracy at the block it picked
    gt = json.loads(bench.GROUND_TRUTH.read_text())
    (case,) = out["cases"]
    assert case["seed"] == 0 and case["num_train"] == 100
    for method in ("layer", "scl"):
        m = gt["cells"]["tiny/digits/10"]["methods"][method]
        acc = {int(b): v["test"] for b, v in m["final"]["0"].items()}
        res = summary["rules"][f"tiny/digits/10 / {method} FT"]
        for rule, block in case["picks"][method].items():
            assert res["rows"][f"rule: {rule}"]["mean_accuracy"] == pytest.approx(100 * acc[block])
        # the reference: the block whose selection runs had the best validation accuracy (never test)
        ref = max(m["selection"], key=lambda b: m["selection"][b]["val_mean"])
        assert res["reference_block"] == int(ref)
        assert res["rows"]["oracle (best block per seed, test)"]["mean_accuracy"] == pytest.approx(100 * max(acc.values()))
        assert len(case["trials"][method]) == bench.n_blocks(method)
    assert "Kendall tau" in printed and "block rule" in printed and "cost of few_steps" in printed
    md = bench.markdown_tables(bench.strict(out))  # the tables of docs/SELECTION.md
    assert "| rule: few_steps |" in md and "| fixed: best block on validation |" in md and "few_steps cost" in md
