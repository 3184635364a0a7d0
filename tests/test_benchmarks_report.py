"""docs/PERFORMANCE.md is generated from the benchmarks' JSON results (benchmarks/_results.py,
benchmarks/performance_report.py): the page built from hand-made results has the right table, the
committed page is what the committed results give, and the committed results agree with the goals.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _results as R  # noqa: E402
import performance_report as P  # noqa: E402


def _result(benchmark, setting, device, rows, date="2026-01-02T03:04:05Z", gpu=None):
    return {"benchmark": benchmark, "setting": setting, "device": device, "command": f"python benchmarks/{benchmark}.py --json",
            "date": date, "hardware": {"cpu": "Test CPU", "cpu_cores": 2, "threads": 1, "torch": "9.9", "transformers": "8.8",
                                       "gpu": gpu, "cuda": "12.0" if gpu else None, "load_average": [1.5, 1.0, 0.5]},
            "notes": ["a note | with a pipe"], "rows": rows}


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    files = {
        "adapters_tiny_cpu.json": _result("adapters", "tiny", "cpu", [
            R.info_row("full FT step time", 12.3456, "ms"),
            R.goal_row("layer_ft_step", 0.3, "Layer FT (block 11): step time", "x full FT"),
            R.goal_row("scl_ft_step", 0.61, "SCL FT (block 10): step time", "x full FT"),
            R.info_row("Layer FT (block 11): saved activations", 0.09, "x full FT"),
            R.goal_row("block_params", 0.0827, "Layer FT (block 11): trainable share", "of all")]),
        "nc_metrics_quick_cuda.json": _result("nc_metrics", "quick", "cuda", [
            R.goal_row("nc_update_vs_gemm_float32", 1.2, "(b) float32 update / H^T H")], gpu="Test GPU 80GB"),
    }
    for name, data in files.items():
        (folder / name).write_text(json.dumps(data))
    template = tmp_path / "template.md"
    template.write_text("# Perf\n\n<!-- GOALS -->\n\nprose\n\n<!-- RESULTS -->")
    return folder, template


def test_goal_row_compares_with_the_goal_direction():
    assert R.goal_row("layer_ft_step", 0.5)["met"] and not R.goal_row("layer_ft_step", 0.5001)["met"]
    assert R.goal_row("cache_layer_run10", 2.0)["met"] and not R.goal_row("cache_layer_run10", 1.99)["met"]
    row = R.goal_row("cache_scl_step10", 0.123456)
    assert row["measured"] == 0.1235 and row["goal"] == {"id": "cache_scl_step10", "text": R.GOALS["cache_scl_step10"].text,
                                                         "bound": 0.15, "direction": "<=", "source": "issue 13 part 1"}
    with pytest.raises(KeyError, match="unknown performance goal 'nope'"):
        R.goal_row("nope", 1.0)


def test_record_writes_one_file_per_benchmark_setting_and_device(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_NC_RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["/somewhere/benchmarks/adapters.py", "--shape", "vit-b16", "--json"])
    path = R.record("adapters", "vit-b16 768x224px b8", "cpu", [R.goal_row("layer_ft_step", 0.35)], notes=["n"])
    assert path == tmp_path / "adapters_vit-b16-768x224px-b8_cpu.json"
    data = json.loads(path.read_text())
    assert data["command"] == "python benchmarks/adapters.py --shape vit-b16 --json"
    assert data["benchmark"] == "adapters" and data["device"] == "cpu" and data["notes"] == ["n"]
    assert data["hardware"]["gpu"] is None and data["hardware"]["threads"] >= 1 and data["hardware"]["torch"]
    assert data["rows"][0]["met"] is True and data["date"].endswith("Z")
    assert P.load_results(tmp_path)[0]["_id"] == "R1"


def test_page_from_hand_made_results(results):
    folder, template = results
    page = P.render(folder, template)
    assert page.startswith("# Perf\n\n| goal | source | bound | measured | met |")
    lines = page.splitlines()
    # the runs are numbered in report order: nc_metrics before adapters
    assert "### R1: nc_metrics, quick, cuda" in lines and "### R2: adapters, tiny, cpu" in lines
    g = R.GOALS
    assert (f"| {g['layer_ft_step'].text} | issue 3 | <= 0.5 | 0.30x full FT | yes | CPU (2 cores, 1 thread) | tiny "
            "| 2026-01-02 | R2 |") in lines
    assert f"| {g['scl_ft_step'].text} | issue 3 | <= 0.5 | 0.61x full FT | **no** | CPU (2 cores, 1 thread) | tiny | 2026-01-02 | R2 |" in lines
    assert f"| {g['block_params'].text} | issue 3 | <= 0.1 | 8.27% | yes | CPU (2 cores, 1 thread) | tiny | 2026-01-02 | R2 |" in lines
    assert f"| {g['nc_update_vs_gemm_float32'].text} | issue 13 part 2 | <= 1.5 | 1.20x | yes | Test GPU 80GB | quick | 2026-01-02 | R1 |" in lines
    # every other goal is listed as not measured, with the device it is stated for
    assert f"| {g['nc_logging_eval_gpu'].text} | issue 13 part 2 | <= 1.05 | not measured | - | GPU | - | - | - |" in lines
    table = [line for line in lines if line.startswith("| ") and "| issue " in line]
    assert len(table) == len(g)
    # the adapters run: one method x quantity table, then the rows without a method
    assert "| method | step time (x full FT) | saved activations (x full FT) | trainable share |" in lines
    assert "| Layer FT (block 11) | 0.30 (goal <= 0.5: met) | 0.09 | 8.27% (goal <= 0.1: met) |" in lines
    assert "| SCL FT (block 10) | **0.61 (goal <= 0.5: missed)** | - | - |" in lines
    assert "| full FT step time | 12.35 ms | - | - |" in lines
    assert "- a note \\| with a pipe" in lines and "python benchmarks/adapters.py --json" in lines
    assert "Test GPU 80GB (CUDA 12.0), CPU Test CPU" in page and "load average at the end 1.5 / 1 / 0.5" in page
    # the summary gpu_check.sh prints
    summary = P.summary(folder)
    assert f"MISS  {g['scl_ft_step'].text} (<= 0.5): 0.61x full FT  [cpu, tiny]" in summary
    assert f"----  {g['trainer_overhead'].text} (<= 1.1): not measured" in summary


def test_bad_inputs_are_named(results, tmp_path):
    folder, template = results
    bare = tmp_path / "bare.md"
    bare.write_text("no markers")
    with pytest.raises(ValueError, match="no <!-- GOALS --> marker"):
        P.render(folder, bare)
    (folder / "other.json").write_text(json.dumps({"benchmark": "x"}))
    with pytest.raises(ValueError, match=r"other.json: not a benchmark result, missing \['setting'"):
        P.load_results(folder)


def test_check_flag_tells_a_stale_page(results, tmp_path):
    folder, template = results
    page = tmp_path / "PAGE.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "performance_report.py"), "--results", str(folder),
           "--template", str(template), "--output", str(page)]
    assert subprocess.run(cmd + ["--check"], capture_output=True).returncode == 1  # missing
    subprocess.run(cmd, check=True, capture_output=True)
    assert page.read_text() == P.render(folder, template)
    assert subprocess.run(cmd + ["--check"], capture_output=True).returncode == 0
    page.write_text(page.read_text() + "hand edit\n")
    out = subprocess.run(cmd + ["--check"], capture_output=True, text=True)
    assert out.returncode == 1 and "not up to date" in out.stderr


def test_committed_page_is_generated_from_the_committed_results():
    assert (ROOT / "docs" / "PERFORMANCE.md").read_text(encoding="utf-8") == P.render(), (
        "docs/PERFORMANCE.md is stale: run python benchmarks/performance_report.py")
    # one page only: docs/performance.md and docs/PERFORMANCE.md collide on case-insensitive file systems
    assert [p.name for p in (ROOT / "docs").iterdir() if p.name.lower() == "performance.md"] == ["PERFORMANCE.md"]


def test_committed_results_agree_with_the_goals():
    results = P.load_results(R.RESULTS_DIR)
    assert results, "no benchmark results recorded in benchmarks/results"
    for r in results:
        assert r["_file"] == f"{r['benchmark']}_{R._slug(r['setting'])}_{r['device']}.json"
        for row in r["rows"]:
            if row["goal"] is None:
                assert row["met"] is None
                continue
            goal = R.GOALS[row["goal"]["id"]]
            assert (row["goal"]["bound"], row["goal"]["direction"]) == (goal.bound, goal.direction), r["_file"]
            assert row["met"] == goal.met(row["measured"]), (r["_file"], row["quantity"])
            assert goal.benchmark == r["benchmark"]


def test_gpu_check_script_parses_and_rejects_unknown_options():
    script = ROOT / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    out = subprocess.run(["bash", str(script), "--gpu"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage" in out.stderr


def test_trainer_benchmark_loads_the_builtin_model_by_its_stable_name(monkeypatch):
    # --model hf-nc/tiny-vit-fmnist (the name the cards print) was sent to the offline Hub
    import argparse
    import importlib.util

    from hf_nc.checkpoints import DEFAULT_MODEL_NAME
    from hf_nc.data import load_image_dataset

    spec = importlib.util.spec_from_file_location("benchmark_trainer", ROOT / "benchmarks" / "trainer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    loaded = []

    class Loaded(Exception):
        pass

    def stop(model, config):  # the model loaded: stop before the timed training
        loaded.append(model)
        raise Loaded

    monkeypatch.setattr(bench, "get_peft_model", stop)
    train = load_image_dataset("digits", shots_per_class=2)["train"]
    with pytest.raises(Loaded):
        bench.run(bench.Trainer, argparse.Namespace(model=DEFAULT_MODEL_NAME, layer=-6), (train, train))
    assert loaded[0].config.num_labels == 10
