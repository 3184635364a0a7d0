"""Model-level selection: one forward pass per candidate for every score, fine-tuned ground truth,
and the model-level benchmark (``benchmarks/transferability_models.py``)."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import DatasetDict
from tiny_models import build_tiny_model

from hf_nc.selection import SCORES, rank_models
from hf_nc.selection import correlation as C

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import transferability_models as bench  # noqa: E402
from test_selection import constant_images  # noqa: E402  (one synthetic dataset for both files)


@pytest.fixture(scope="module")
def data():
    return DatasetDict(train=constant_images(16, seed=0), test=constant_images(8, seed=1))


def damped(factor: float):
    """The class signal (the patch filters' mean) shrunk by ``factor``: separation falls with it."""
    model = build_tiny_model("vit_cls")
    w = model.vit.embeddings.patch_embeddings.projection.weight
    with torch.no_grad():
        w -= factor * w.mean(dim=(1, 2, 3), keepdim=True)
    return model


class ForwardCounter:
    def __init__(self, model):
        self.calls, self.rows = 0, 0
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        x = kwargs.get("pixel_values", args[0] if args else None)
        self.calls += 1
        self.rows += int(x.shape[0])


@pytest.mark.parametrize("layers", ["final", "all"])
def test_rank_models_computes_every_score_from_one_forward_pass_per_candidate(data, layers):
    """All nine scores (and per-block ones) come from ONE pass over the training split per
    candidate: ceil(N / batch) forward calls seeing each image once; the probe adds the test split only."""
    cands = {"good": damped(0.0), "mid": damped(0.5), "bad": damped(0.97)}
    counters = {n: ForwardCounter(m) for n, m in cands.items()}
    n_train, n_test, batch = len(data["train"]), len(data["test"]), 20
    result = rank_models(cands, data["train"], scores=list(SCORES), layers=layers, block_scores=["nc1", "logme"] if layers == "all" else None,
                         batch_size=batch, progress=False)
    for name, c in counters.items():
        assert (c.calls, c.rows) == (math.ceil(n_train / batch), n_train), name
    assert all(set(SCORES) <= set(c.scores) for c in result.candidates)
    counters = {n: ForwardCounter(m) for n, m in cands.items()}  # hooks stack; count afresh
    rank_models(cands, data, scores=list(SCORES), layers=layers, linear_probe=True, batch_size=batch, progress=False)
    for name, c in counters.items():
        # the first counter per model is still attached too, but these count this call only
        assert c.rows == n_train + n_test and c.calls == math.ceil(n_train / batch) + math.ceil(n_test / batch), name


def test_rank_models_correlates_with_provided_fine_tuned_accuracies_not_the_probe(data):
    """With ``accuracies=`` (say, fine-tuned test accuracies) the correlations use them, not the
    probe: the separation order good > mid > bad is known by construction; accuracies given in that
    order give tau = +1 for every score whose direction is right, reversed ones give -1."""
    cands = {"good": damped(0.0), "mid": damped(0.6), "bad": damped(0.97)}
    names = ["logme", "logme_thin", "hscore", "hscore_shrinkage", "nc1", "cdnv", "ncti"]
    agree = rank_models(cands, data, scores=names, linear_probe=True, accuracies={"good": 0.9, "mid": 0.6, "bad": 0.2},
                        batch_size=20, progress=False)
    assert agree.ground_truth == "provided" and [c.name for c in agree.candidates] == ["good", "mid", "bad"]
    reverse = rank_models(cands, data, scores=names, linear_probe=True, accuracies={"good": 0.1, "mid": 0.5, "bad": 0.8},
                          batch_size=20, progress=False)
    for name in names:
        assert agree.score_correlations[name]["kendall_tau"] == pytest.approx(1.0), name
        assert reverse.score_correlations[name]["kendall_tau"] == pytest.approx(-1.0), name
        assert reverse.score_correlations[name]["top1_regret"] == pytest.approx(0.7), name
    # bootstrap intervals over candidates: every usable resample of a perfect order gives +1
    boot = rank_models(cands, data, scores=["nc1", "logme"], accuracies={"good": 0.9, "mid": 0.6, "bad": 0.2}, bootstrap=60,
                       batch_size=20, progress=False)
    for name in ("nc1", "logme"):
        assert boot.score_correlations[name]["kendall_tau_ci"] == pytest.approx([1.0, 1.0]), name
    assert "kendall_tau_ci" not in agree.score_correlations["nc1"] and boot.settings["bootstrap"] == 60
    assert type(boot).from_json(boot.to_json()).to_dict() == boot.to_dict()
    with pytest.raises(ValueError, match="bootstrap must be >= 0"):  # was: silently no intervals
        rank_models(cands, data, accuracies={"good": 0.9, "mid": 0.6, "bad": 0.2}, bootstrap=-3, progress=False)
    with pytest.raises(ValueError, match="num_classes must be at least 2"):  # 0 used to mean "from the data"
        rank_models(cands, data, num_classes=0, progress=False)
    # a subset of candidates with accuracies: the correlation is over those only
    part = rank_models(cands, data, scores=["nc1"], accuracies={"good": 0.9, "bad": 0.2}, batch_size=20, progress=False)
    assert part.score_correlations["nc1"]["n"] == 2


def _scores_for(values: dict) -> dict:
    """``{task: {"values": {cand: {score: v}}}}`` with every score equal to ``values[task][cand]``
    (oriented: the NC scores get the sign flipped so that higher oriented = higher value)."""
    from hf_nc.selection import scores as S

    return {t: {"values": {c: {n: S.get_score(n).direction * v for n in bench.SCORE_NAMES} for c, v in per.items()}}
            for t, per in values.items()}


def test_benchmark_correlate_per_task_pooled_and_bootstrap():
    """Known answers: a score equal to the accuracy on one task (tau +1) and reversed on the other
    (tau -1) pools to 0; the bootstrap CI of a perfect score is [1, 1]; regret in points."""
    cands = [f"c{i}" for i in range(6)]
    acc = {"a": {c: [0.1 * i, 0.1 * i + 0.02] for i, c in enumerate(cands)}, "b": {c: [0.5 - 0.05 * i] for i, c in enumerate(cands)}}
    scores = _scores_for({"a": {c: float(i) for i, c in enumerate(cands)}, "b": {c: float(i) for i, c in enumerate(cands)}})
    out = bench.correlate(scores, acc, ["a", "b"], num_boot=40)
    for name in bench.SCORE_NAMES:
        r = out[name]
        assert r["a"]["kendall_tau"] == pytest.approx(1.0) and r["a"]["kendall_tau_ci"] == [1.0, 1.0], name
        assert r["b"]["kendall_tau"] == pytest.approx(-1.0) and r["b"]["top1_regret_points"] == pytest.approx(25.0), name
        assert r["pooled"]["kendall_tau"] == pytest.approx(0.0) and r["pooled"]["n"] == 6, name
        assert r["pooled"]["kendall_tau_ci"][0] == pytest.approx(0.0) and r["pooled"]["kendall_tau_ci"][1] == pytest.approx(0.0)
    # paired difference against LogME of the same values: exactly 0
    d = bench.paired_difference(scores, acc, ["a"], "nc1", "logme", num_boot=30)
    assert d["difference"] == 0.0 and d["ci"] == [0.0, 0.0]


def test_score_correlations_bootstrap_equals_the_bootstrap_function():
    rng = np.random.default_rng(5)
    items = [f"m{i}" for i in range(7)]
    scores = {i: {"nc1": float(rng.normal()), "logme": float(rng.normal())} for i in items}
    acc = {i: float(rng.uniform()) for i in items}
    out = C.score_correlations(scores, acc, num_bootstrap=80, seed=3)
    for name in ("nc1", "logme"):
        ref = C.bootstrap([scores[i][name] for i in items], [acc[i] for i in items], num_samples=80, seed=3)
        assert out[name]["kendall_tau_ci"] == list(ref["kendall_tau"]) and out[name]["weighted_tau_ci"] == list(ref["weighted_tau"])
    assert "kendall_tau_ci" not in C.score_correlations(scores, acc)["nc1"]


def test_benchmark_correlate_matches_scipy_on_random_data():
    """Independent check: the per-task tau equals scipy's kendalltau / weightedtau on the mean accuracies."""
    from scipy import stats

    rng = np.random.default_rng(3)
    cands = [f"c{i}" for i in range(9)]
    raw = {c: float(rng.normal()) for c in cands}
    acc = {"t": {c: list(rng.uniform(0, 1, 3)) for c in cands}}
    out = bench.correlate(_scores_for({"t": raw}), acc, ["t"], num_boot=20)
    names = sorted(cands)
    s, a = [raw[c] for c in names], [float(np.mean(acc["t"][c])) for c in names]
    assert out["logme"]["t"]["kendall_tau"] == pytest.approx(stats.kendalltau(s, a).statistic)
    assert out["logme"]["t"]["weighted_tau"] == pytest.approx(stats.weightedtau(s, a).statistic)
    assert out["logme"]["t"]["top1_regret_points"] == pytest.approx(100 * C.top1_regret(s, a))
    assert "pooled" not in out["logme"]


@pytest.mark.slow
def test_models_benchmark_quick_mode_runs_end_to_end(tmp_path, capsys):
    """``--quick``: the built-in ViT and two random inits, digits, real (2-step) fine-tuning runs
    through the study's runner, every score, resumable (a second call reruns nothing)."""
    out = bench.main(["--quick", "--models_dir", str(tmp_path / "cache"), "--json", str(tmp_path / "m.json"), "--bootstrap", "50"])
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "m.json").read_text())  # strict JSON
    res = out["models"]
    assert set(res["candidates"]) == {"builtin", "random_init", "random_init_s1"}
    assert set(res["correlations"]) == set(bench.TRUTHS)
    for truth, rows in res["correlations"].items():
        assert set(rows) == set(bench.SCORE_NAMES)
        for name, per in rows.items():
            r = per["digits"]
            assert r["n"] == 3 and r["top1_regret_points"] >= 0, (truth, name)
    for truth in bench.TRUTHS:
        accs = res["accuracies"]["digits"][truth]
        assert set(accs) == set(res["candidates"]) and all(0 <= a <= 1 for v in accs.values() for a in v)
    runs = sorted((tmp_path / "cache" / "results").glob("*.json"))
    assert len(runs) == 9 and not any("test" in k for r in runs for k in json.loads(r.read_text())["result"] if "selection" in r.name)
    assert saved["settings"]["protocol"]["scl_ft"]["block"] == 1 and "ground truth: full_ft" in printed
    table = bench.markdown(res)
    assert all(f"| {name} |" in table for name in bench.SCORE_NAMES) and "| builtin |" in table
    again = bench.main(["--quick", "--models_dir", str(tmp_path / "cache"), "--bootstrap", "50"])
    assert again["models"]["cpu_s"]["finetune_this_invocation"] == 0.0
    assert again["models"]["accuracies"] == res["accuracies"]
