"""Recording benchmark results: every performance goal, and one JSON file per benchmark run.

Each benchmark, given ``--json``, writes ``benchmarks/results/<benchmark>_<setting>_<device>.json``::

    {"benchmark": "prefix_cache", "setting": "vit-12x192-96px", "command": "python benchmarks/...",
     "date": "2026-12-01T23:10:00Z", "device": "cpu",
     "hardware": {"cpu": ..., "gpu": ..., "torch": ..., "threads": ..., "load_average": ...},
     "notes": ["..."],
     "rows": [{"quantity": ..., "measured": 0.14, "unit": "x full-FT step",
               "goal": {"id": ..., "text": ..., "bound": 0.15, "direction": "<=", "source": ...},
               "met": true}, ...]}

Rows without a goal (``"goal": null, "met": null``) are measured numbers the issues ask to see
(e.g. memory ratios of the adapters). ``benchmarks/performance_report.py`` renders
``docs/PERFORMANCE.md`` from every such file, with one table of all the goals in :data:`GOALS`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

#: where ``--json`` without a path writes; ``HF_NC_RESULTS_DIR`` overrides it (dry runs, tests)
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Goal:
    """One performance goal of an issue.

    Args:
        id: stable key used by the benchmarks' rows.
        text: the goal as the issue states it.
        bound: the numeric bound.
        direction: ``"<="`` (measured must not exceed ``bound``) or ``">="``.
        source: where the goal comes from (issue and part).
        devices: the device kinds the goal is stated for (``"cpu"``, ``"cuda"``).
        benchmark: the benchmark script that measures it.
    """

    id: str
    text: str
    bound: float
    direction: str
    source: str
    devices: tuple[str, ...]
    benchmark: str

    def met(self, measured: float) -> bool:
        return measured <= self.bound if self.direction == "<=" else measured >= self.bound


_CPU, _GPU, _ANY = ("cpu",), ("cuda",), ("cpu", "cuda")

#: every performance goal of the first round (issues 2, 3, 5) and of issue 13, in report order
GOALS: dict[str, Goal] = {g.id: g for g in [
    # NCStats engine (issue 2, issue 13 part 2 / 2b)
    Goal("nc_vs_research_time", "NCStats time no slower than research-style code (N = 50k, d 768, K 100)",
         1.0, "<=", "issue 2 (a)", _ANY, "nc_metrics"),
    Goal("nc_memory_flat", "NCStats peak memory flat in N (growth N 50k -> 200k)", 1.1, "<=", "issue 2 (a)",
         _ANY, "nc_metrics"),
    Goal("nc_memory_repeats", "peak memory repeats (max / min of 2 runs; bound chosen here)", 1.1, "<=",
         "issue 13 part 3", _ANY, "nc_metrics"),
    Goal("nc_vs_gemm", "NCStats update + compute <= 1.5x one float64 H^T H (CPU: no regression)", 1.5, "<=",
         "issue 2 (b), issue 13 part 2", _CPU, "nc_metrics"),
    Goal("nc_update_vs_gemm_float64", "GPU: NCStats update <= 1.5x one H^T H, float64", 1.5, "<=",
         "issue 13 part 2", _GPU, "nc_metrics"),
    Goal("nc_update_vs_gemm_float32", "GPU: NCStats update (float32 statistics) <= 1.5x one H^T H, float32",
         1.5, "<=", "issue 13 part 2", _GPU, "nc_metrics"),
    Goal("nc_logging_eval", "per-layer NC logging <= 1.10x a bare eval pass", 1.10, "<=",
         "issue 2 (c)", _CPU, "nc_metrics"),
    Goal("nc_logging_eval_gpu", "GPU: NC logging <= 1.05x a bare eval pass", 1.05, "<=", "issue 13 part 2",
         _GPU, "nc_metrics"),
    Goal("nc_k1000_vs_gemm", "K = 1000, N = 100k: NCStats update + compute <= 1.5x one H^T H (float64)", 1.5,
         "<=", "issue 13 part 2b", _ANY, "nc_metrics"),
    Goal("nc_compute_memory_k21k", "compute() memory small enough for K = 21,841 (was ~22 GB; bound chosen "
         "here: 1 GiB)", 1024.0, "<=", "issue 13 part 2b", _CPU, "nc_metrics"),
    # NCTrainer (issue 5, issue 13 part 2c)
    Goal("trainer_overhead", "NCTrainer <= 1.10x a plain Trainer (wall time of a short run)", 1.10, "<=",
         "issue 5", _ANY, "trainer"),
    Goal("trainer_overhead_13", "NCTrainer <= 1.05x a plain Trainer", 1.05, "<=", "issue 13 part 2c", _ANY,
         "trainer"),
    # adapters (issue 3)
    Goal("block_params", "one block of 12 trains <= 10% of the parameters", 0.10, "<=", "issue 3", _ANY,
         "adapters"),
    Goal("layer_ft_step", "Layer FT at a late block <= 0.5x the step time of full FT", 0.5, "<=", "issue 3",
         _ANY, "adapters"),
    Goal("scl_ft_step", "SCL FT at a late block <= 0.5x the step time of full FT", 0.5, "<=", "issue 3", _ANY,
         "adapters"),
    Goal("layer_ft_memory", "Layer FT at a late block <= 0.5x the training memory of full FT", 0.5, "<=",
         "issue 3", _ANY, "adapters"),
    Goal("scl_ft_memory", "SCL FT at a late block <= 0.5x the training memory of full FT", 0.5, "<=", "issue 3",
         _ANY, "adapters"),
    # frozen-prefix cache (issue 13 part 1)
    Goal("cache_layer_step10", "cached Layer FT at block 10 <= 0.15x a full-FT step", 0.15, "<=",
         "issue 13 part 1", _ANY, "prefix_cache"),
    Goal("cache_scl_step10", "cached SCL FT at block 10 <= 0.15x a full-FT step", 0.15, "<=", "issue 13 part 1",
         _ANY, "prefix_cache"),
    Goal("cache_layer_run10", "Layer FT at block 10: 10-epoch run >= 2x faster cached (1st epoch uncached)", 2.0,
         ">=", "issue 13 part 1", _ANY, "prefix_cache"),
    Goal("cache_scl_run10", "SCL FT at block 10: 10-epoch run >= 2x faster cached (1st epoch uncached)", 2.0,
         ">=", "issue 13 part 1", _ANY, "prefix_cache"),
    Goal("cache_layer_run6", "Layer FT at block 6: 10-epoch run >= 1.3x faster cached (1st epoch uncached)", 1.3,
         ">=", "issue 13 part 1", _ANY, "prefix_cache"),
    Goal("cache_scl_run6", "SCL FT at block 6: 10-epoch run >= 1.3x faster cached (1st epoch uncached)", 1.3,
         ">=", "issue 13 part 1", _ANY, "prefix_cache"),
]}


def goal_row(goal_id: str, measured: float, quantity: Optional[str] = None, unit: str = "x") -> dict:
    """A measured value against the goal ``goal_id`` of :data:`GOALS`.

    Args:
        goal_id: key of :data:`GOALS`.
        measured: the measured ratio (or value, in ``unit``).
        quantity: what was measured (default: the goal's text).
        unit: unit of ``measured``.

    Raises:
        KeyError: unknown goal id.
    """
    if goal_id not in GOALS:
        raise KeyError(f"unknown performance goal {goal_id!r}; known: {sorted(GOALS)}")
    goal = GOALS[goal_id]
    measured = _round(measured)
    return {"quantity": quantity or goal.text, "measured": measured, "unit": unit,
            "goal": {k: v for k, v in asdict(goal).items() if k in ("id", "text", "bound", "direction", "source")},
            "met": goal.met(measured)}


def _round(value: float) -> float:
    """4 significant digits: what a benchmark on a shared machine resolves (and what the page shows)."""
    return float(f"{float(value):.4g}")


def info_row(quantity: str, measured: float, unit: str = "x") -> dict:
    """A measured value the issues ask to see, without a goal."""
    return {"quantity": quantity, "measured": _round(measured), "unit": unit, "goal": None, "met": None}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str) -> dict:
    """The machine a result was measured on: CPU model and cores, GPU name, library versions, load."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "cpu": _cpu_model(), "cpu_cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "gpu": None,
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]  # other processes on a shared machine
    except OSError:
        pass
    return info


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    """Adds ``--json [PATH]`` (default path: ``benchmarks/results/<benchmark>_<setting>_<device>.json``)."""
    parser.add_argument("--json", nargs="?", const="", default=None, metavar="PATH",
                        help="also write the ratios and goals as JSON (default path: benchmarks/results/"
                             "<benchmark>_<setting>_<device>.json; HF_NC_RESULTS_DIR changes the folder)")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-").lower()


def record(benchmark: str, setting: str, device: str, rows: list[dict], path: Optional[str] = None,
           notes: Optional[list[str]] = None) -> Path:
    """Writes one result file and returns its path.

    Args:
        benchmark: the benchmark's name (its file name without ``.py``).
        setting: what was run, short (model, sizes), also part of the file name.
        device: ``"cpu"`` or ``"cuda[:i]"``.
        rows: :func:`goal_row` / :func:`info_row` dicts.
        path: where to write; ``None`` or ``""``: the default path under ``HF_NC_RESULTS_DIR`` or
            ``benchmarks/results``.
        notes: free-text notes printed with the result (clock used, what memory means...).
    """
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    if not path:
        folder = Path(os.environ.get("HF_NC_RESULTS_DIR") or RESULTS_DIR)
        path = folder / f"{benchmark}_{_slug(setting)}_{kind}.json"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = [Path(sys.argv[0]).as_posix()] + sys.argv[1:]
    if argv and "benchmarks/" in argv[0]:
        argv[0] = "benchmarks/" + argv[0].split("benchmarks/")[-1]
    result = {
        "benchmark": benchmark, "setting": setting, "device": kind,
        "command": "python " + shlex.join(argv),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hardware": hardware(device), "notes": list(notes or []), "rows": rows,
    }
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results written to {path}")
    return path


def print_goals(rows: list[dict]) -> None:
    """Prints every row that has a goal as MET / MISS against its bound."""
    goals = [r for r in rows if r["goal"]]
    if goals:
        print("goals:")
    for r in goals:
        g = r["goal"]
        print(f"  {'MET ' if r['met'] else 'MISS'} {r['quantity']}: {r['measured']:.3g} {r['unit']} "
              f"(goal {g['direction']} {g['bound']:g}; {g['source']})")
