"""benchmarks/transferability_dinov2.py: the DINOv2-S sweep's LR check (validation only, grid-edge
extension) on fake run records: no DINOv2 run, no model."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import transferability_dinov2 as D  # noqa: E402

BLOCKS = (0, 5, 11)


def _record(val: float, test: float) -> dict:
    return {"status": "ok", "result": {"validation_accuracy": val, "test_accuracy": test}}


class FakeSweep:
    """Stands in for ``dinov2_sweep_runs``: ``table[lr][block] = (validation, test)``; remembers
    every LR it was asked for; LRs outside ``table`` have no runs (as an empty cache)."""

    def __init__(self, table: dict):
        self.table, self.asked = table, []

    def __call__(self, out_dir, study_dir, seeds, lr, blocks=None, run=True):
        self.asked.append(lr)
        runs = self.table.get(lr, {})
        return {s: {b: _record(*runs[b]) for b in (blocks if blocks is not None else range(12)) if b in runs} for s in seeds}


def _table(val_by_lr: dict, test_by_lr: dict) -> dict:
    """Per-block accuracies whose means over BLOCKS are ``val_by_lr`` / ``test_by_lr`` (block 0 low,
    block 11 high, so a per-block choice could differ from the mean's)."""
    return {lr: {b: (val_by_lr[lr] + d, test_by_lr[lr] - d) for b, d in zip(BLOCKS, (-0.1, 0.0, 0.1))} for lr in val_by_lr}


def _check(monkeypatch, table):
    fake = FakeSweep(table)
    monkeypatch.setattr(D, "dinov2_sweep_runs", fake)
    return D.dinov2_lr_check(Path("unused"), Path("unused"), run=False, blocks=BLOCKS), fake


def test_lr_check_chooses_on_validation_only(monkeypatch):
    val = {1e-4: 0.70, 3e-4: 0.80, 1e-3: 0.75}
    honest, _ = _check(monkeypatch, _table(val, {1e-4: 0.70, 3e-4: 0.80, 1e-3: 0.75}))
    # test poisoned: 1e-3 (then 1e-4) far ahead on test, 3e-4 worst: the choice must not move
    poisoned, fake = _check(monkeypatch, _table(val, {1e-4: 0.95, 3e-4: 0.10, 1e-3: 0.99}))
    for got in (honest, poisoned):
        assert got["status"] == "complete" and got["chosen_lr"] == 3e-4 and got["sweep_lr_is_chosen"]
        assert got["validation_mean"] == pytest.approx({"0.0001": 0.70, "0.0003": 0.80, "0.001": 0.75})
        assert got["extended"] is None and not got["at_grid_edge"] and got["grid"] == [1e-4, 3e-4, 1e-3]
    assert fake.asked[:3] == [1e-4, 3e-4, 1e-3] and set(fake.asked) == {1e-4, 3e-4, 1e-3}  # an interior winner adds no LR
    assert poisoned["all_blocks_mean"] == {}  # no LR has a whole sweep here
    # the test means are reported beside the choice (the poisoned ones, as given)
    assert poisoned["test_mean"] == pytest.approx({"0.0001": 0.95, "0.0003": 0.10, "0.001": 0.99})
    assert poisoned["per_block"]["0.001"]["11"] == {"validation": pytest.approx(0.85), "test": pytest.approx(0.89)}
    line = D.describe_lr_check(poisoned)
    assert "0.0001 70.0, 0.0003 80.0, 0.001 75.0 -> chosen 0.0003" in line and "is the chosen one" in line
    assert "pending" in D.describe_lr_check({"status": "pending", "runs_done": {}})


def test_lr_check_ties_go_to_the_sweeps_lr():
    recs = {lr: {b: _record(0.8, t) for b in BLOCKS} for lr, t in ((1e-4, 0.9), (3e-4, 0.1), (1e-3, 0.9))}
    assert D.choose_lr(recs, BLOCKS)["chosen_lr"] == 3e-4
    recs.pop(3e-4)
    assert D.choose_lr(recs, BLOCKS)["chosen_lr"] == 1e-4  # no prior among them: the lower LR
    with pytest.raises(ValueError, match="missing"):
        D.choose_lr({1e-4: {0: _record(0.5, 0.5)}}, BLOCKS)


@pytest.mark.parametrize("edge, past, past_wins", [(1e-3, 3e-3, False), (1e-3, 3e-3, True), (1e-4, 3e-5, False), (1e-4, 3e-5, True)])
def test_lr_check_extends_a_winning_grid_edge_once(monkeypatch, edge, past, past_wins):
    val = {1e-4: 0.60, 3e-4: 0.70, 1e-3: 0.60, edge: 0.80, past: 0.90 if past_wins else 0.65}
    further = {3e-5: 1e-5, 3e-3: 1e-2}[past]  # never asked for: the grid is extended once only
    val[further] = 0.99
    test = {lr: 1.0 - v for lr, v in val.items()}  # test poisoned against validation
    got, fake = _check(monkeypatch, _table(val, test))
    assert fake.asked[:4] == [1e-4, 3e-4, 1e-3, past] and set(fake.asked) == {1e-4, 3e-4, 1e-3, past}
    assert got["extended"] == past and got["grid"] == sorted([1e-4, 3e-4, 1e-3, past])
    assert got["chosen_lr"] == (past if past_wins else edge)
    assert got["at_grid_edge"] is past_wins and not got["sweep_lr_is_chosen"]
    assert got["validation_mean"][f"{past:g}"] == pytest.approx(val[past])


def test_lr_check_reports_the_mean_over_every_block_where_a_whole_sweep_exists(monkeypatch):
    table = _table({1e-4: 0.6, 3e-4: 0.8, 1e-3: 0.7}, {1e-4: 0.6, 3e-4: 0.8, 1e-3: 0.7})
    table[1e-3] = {b: (0.5 + 0.01 * b, 0.4) for b in range(12)}  # a whole sweep at 1e-3
    got, _ = _check(monkeypatch, table)
    assert got["chosen_lr"] == 3e-4  # read from blocks 0, 5, 11 only
    assert got["all_blocks_mean"] == {"0.001": {"validation": pytest.approx(0.555), "test": pytest.approx(0.4)}}
    assert "all 12 blocks of seed 0 where its whole sweep ran: validation 0.001 55.5, test 0.001 40.0" in D.describe_lr_check(got)


def test_lr_check_pending_until_every_run_is_cached(monkeypatch):
    val = {1e-4: 0.6, 3e-4: 0.7, 1e-3: 0.8}
    table = _table(val, val)
    del table[1e-4][5]
    got, _ = _check(monkeypatch, table)
    assert got["status"] == "pending" and got["runs_done"]["0.0001"] == [0, 11]
    got, fake = _check(monkeypatch, _table(val, val))  # 1e-3 wins: pending until 3e-3's runs exist
    assert got["status"] == "pending" and fake.asked[-1] == 3e-3 and got["runs_done"]["0.003"] == []


def test_summary_uses_the_chosen_lr_once_its_sweep_ran(monkeypatch):
    full = {b: (0.5, 0.5) for b in range(12)}
    check = {"status": "complete", "chosen_lr": 1e-3}
    monkeypatch.setattr(D, "dinov2_sweep_runs", FakeSweep({1e-3: dict(list(full.items())[:3])}))
    assert D.sweep_lr(check, Path("unused")) == D.DINOV2_LR  # the chosen LR's sweep is not complete yet
    monkeypatch.setattr(D, "dinov2_sweep_runs", FakeSweep({1e-3: full}))
    assert D.sweep_lr(check, Path("unused")) == 1e-3
    assert D.sweep_lr({"status": "pending"}, Path("unused")) == D.DINOV2_LR
    assert D.sweep_lr({"status": "complete", "chosen_lr": D.DINOV2_LR}, Path("unused")) == D.DINOV2_LR


def test_summary_at_a_given_lr_reads_that_sweep_and_says_it_is_not_the_choice(monkeypatch, tmp_path):
    full = {b: (0.5, 0.5) for b in range(12)}
    grid = {lr: {b: full[b] for b in BLOCKS} for lr in (1e-4, 3e-3)}
    partial = {b: full[b] for b in (0, 1, 2, 3, 5, 11)}  # the check's blocks, not a whole sweep
    best = {b: (0.9, 0.5) for b in range(12)}  # the check chooses 1e-3 (validation), and its sweep is whole
    sweep = FakeSweep({**grid, 1e-3: best, D.DINOV2_LR: partial})
    monkeypatch.setattr(D, "dinov2_sweep_runs", sweep)
    out = D.dinov2_summary(tmp_path, 10, lr=D.DINOV2_LR)  # 3e-4's sweep is incomplete here: pending, at that LR
    assert sweep.asked[-1] == D.DINOV2_LR  # the summarised sweep is the one asked for, not the check's choice (1e-3)
    assert out["status"] == "pending" and out["lr"] == D.DINOV2_LR and out["runs_done"]["0"] == [0, 1, 2, 3, 5, 11]
    assert out["lr_check"]["chosen_lr"] == 1e-3 and D.sweep_lr(out["lr_check"], tmp_path) == 1e-3
    assert out["lr_check"]["lr_override"] is True and out["lr_check"]["summary_lr"] == D.DINOV2_LR
    assert "sensitivity view" in D.describe_lr_check(out["lr_check"])
