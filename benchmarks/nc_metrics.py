"""NC metrics engine benchmark: NCStats vs research-style code and vs the matmul limit.

    python benchmarks/nc_metrics.py            # d=768, K=100, N=50,000 and 200,000; (d) N=100,000
    python benchmarks/nc_metrics.py --quick    # N=10,000 and 40,000; (d) N=20,000
    python benchmarks/nc_metrics.py --parts d --large_n 100000   # only (d), ImageNet-sized K
    python benchmarks/nc_metrics.py --device cuda --dtypes float64,float32
    python benchmarks/nc_metrics.py --quick --json     # also record the ratios for docs/PERFORMANCE.md

Everything is measured side by side in one run, on the same machine:

(a) NCStats (update per batch + compute) vs the usual research-code approach: keep every
    batch in a list, concatenate, per-class loop for the means and the within-class
    covariance, dense d x d ``torch.linalg.pinv(Sigma_B)``, trace -- in float64 like ours
    (same precision; a float32 variant would lose digits). Time at N = N1 (best of
    ``--repeats``, batches pre-generated so generation is not timed) and peak memory at
    N1 and N2 with batches generated on the fly (CPU: peak resident memory of a fresh
    subprocess per run whose glibc serves every allocation above 64 KiB by mmap and gives
    it back at free -- ``MALLOC_MMAP_THRESHOLD_=65536``, ``MALLOC_TRIM_THRESHOLD_=0`` -- so
    resident memory follows the live allocations instead of glibc's heap caching, which
    made plain RSS read 0.3 MiB once and 6.7 GB another time; VmHWM after resetting it via
    /proc/self/clear_refs, minus the RSS before the run; each run twice, both printed, to
    show it repeats. CUDA: torch.cuda.max_memory_allocated above the start).
(b) NCStats update+compute vs the physical limit: one float64 product H^T H with H the
    (N1, d) float64 feature matrix already in memory; also the update loop alone, and, for every
    other dtype of ``--dtypes`` (``float32``: ``NCStats(dtype=torch.float32)``, for GPUs with slow
    float64), the update loop against one H^T H in that dtype (issue 13: <= 1.5x on a GPU).
(c) Per-layer NC collection overhead during a ViT eval pass (``part_c``).
(d) ImageNet-sized label sets (``part_d``): K = 1000, d = 768, batches of 1024, 1 thread,
    float64, N = ``--large_n``: NCStats update + compute vs one H^T H (interleaved, best of
    ``--repeats`` each), and compute()'s
    peak memory at K = 1000 (twice) and K = 21,841 (ImageNet-21k, once: ~1 min) measured
    as in (a).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from _results import add_json_argument, goal_row, info_row, print_goals, record
from hf_nc.metrics import NCStats

D, K, BATCH = 768, 100, 1024
CLOCK = time.perf_counter  # --clock cpu: time.process_time
RECORD: list[dict] = []  # rows for --json (benchmarks/_results.py)


# ----------------------------------------------------------------------------- data
def batches(n: int, device: str, seed: int = 0):
    """Yields (features float32 (B, D), labels (B,)) batches, generated on the fly."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    means = torch.randn(K, D, generator=g) * 2.0  # (K, D)
    for start in range(0, n, BATCH):
        b = min(BATCH, n - start)
        y = torch.randint(0, K, (b,), generator=g)
        x = means[y] + torch.randn(b, D, generator=g) + 5.0
        yield x.to(device), y.to(device)


# ----------------------------------------------------------------------------- methods
def ours_update(stream) -> NCStats:
    stats = NCStats(K, D)
    for x, y in stream:
        stats.update(x, y)
    return stats


def ours(stream) -> float:
    return ours_update(stream).compute()["nc1"]


def research(stream) -> float:
    """The usual approach: all features in memory, per-class loop, dense pinv(Sigma_B)."""
    feats, labels = [], []
    for x, y in stream:
        feats.append(x.clone())
        labels.append(y.clone())
    H = torch.cat(feats).double()  # (N, D)
    Y = torch.cat(labels)
    N = H.shape[0]
    mu_g = H.mean(dim=0)
    Sw = torch.zeros(D, D, dtype=torch.float64, device=H.device)
    means = []
    for k in range(K):
        Hk = H[Y == k]
        mu = Hk.mean(dim=0)
        means.append(mu)
        C = Hk - mu
        Sw += C.T @ C
    Sw /= N
    M = torch.stack(means) - mu_g  # (K, D)
    Sb = M.T @ M / K  # (D, D)
    return float(torch.trace(Sw @ torch.linalg.pinv(Sb))) / K


def matmul_limit(H: torch.Tensor) -> float:
    return float((H.T @ H)[0, 0])


# ----------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_time(fn, repeats: int, device: str) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        sync(device)
        t = CLOCK()
        out = fn()
        sync(device)
        best = min(best, CLOCK() - t)
    return best, out


# ----------------------------------------------------------------------------- memory
def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def child_peak(method: str, n: int, device: str) -> int:
    """In this (fresh) process: peak memory of one run above the memory before it."""
    if method.startswith("compute_k"):
        return compute_peak(int(method[len("compute_k"):]), n)
    fn = {"ours": ours, "research": research}[method]
    if device.startswith("cuda"):
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn(batches(n, device))
        return torch.cuda.max_memory_allocated() - start
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    start = _rss_bytes("VmRSS")
    fn(batches(n, device))
    return _rss_bytes("VmHWM") - start


def compute_peak(k: int, d: int) -> int:
    """Peak memory of ``compute()`` alone (above the filled statistics) at K = k, dimension d."""
    torch.set_num_threads(1)
    stats = NCStats(k, d)
    g = torch.Generator().manual_seed(0)
    means = torch.randn(k, d, generator=g) * 2.0
    y = torch.arange(k).repeat(2)  # two samples per class
    stats.update(means[y] + torch.randn(len(y), d, generator=g), y)
    stats._buf = None  # the update's work buffer is not compute()'s memory
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = _rss_bytes("VmRSS")
    stats.compute()
    return _rss_bytes("VmHWM") - start


#: glibc: every allocation above 64 KiB is its own mmap, returned at free (repeatable RSS)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_TOP_PAD_": "0"}


def peak_in_subprocess(method: str, n: int, device: str) -> int:
    cmd = [sys.executable, __file__, "--child", method, str(n), "--device", device]
    env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


# ----------------------------------------------------------------------------- part (c)
def part_c(args) -> list[tuple[str, str]]:
    """(c) Per-layer NC collection overhead during a ViT eval pass.

    A ViT-Ti-like model (12 blocks, width 192, 32x32 images, patch 4: 65 tokens) runs an
    evaluation pass over the same batches twice: bare, and with NC statistics of all 12
    blocks plus the classifier input streamed by ``hf_nc.layer_nc`` (first pass only:
    ``ncc_acc`` needs a second pass by definition and is not part of an eval pass).
    """
    from transformers import ViTConfig, ViTForImageClassification

    from hf_nc.layer_nc import layer_nc_stats

    dev, k = args.device, 10
    config = ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
                       image_size=32, patch_size=4, num_labels=k)  # fmt: skip
    model = ViTForImageClassification(config).to(dev).eval()
    g = torch.Generator().manual_seed(0)
    n_batches = 4 if args.quick else 16
    data = [(torch.randn(128, 3, 32, 32, generator=g).to(dev), torch.randint(0, k, (128,), generator=g).to(dev)) for _ in range(n_batches)]

    @torch.no_grad()
    def bare():
        for x, _ in data:
            model(pixel_values=x)

    def with_nc():
        return layer_nc_stats(model, data, k, layers="all", ncc=False, progress=False)

    bare(), with_nc()  # warm-up
    t_bare, _ = best_time(bare, args.repeats, dev)
    t_nc, _ = best_time(with_nc, args.repeats, dev)
    n = 128 * n_batches
    RECORD.append(goal_row("nc_logging_eval_gpu" if dev.startswith("cuda") else "nc_logging_eval", t_nc / t_bare,
                           f"(c) ViT 12x192 eval pass + NC of 12 blocks + final / bare pass, {n} images"))
    return [
        (f"(c) ViT 12x192 eval pass, {n} images", f"{t_bare:9.3f} s"),
        ("(c) same pass + NC of 12 blocks + final", f"{t_nc:9.3f} s"),
        ("(c) overhead ratio", f"{t_nc / t_bare:9.3f} x   (goal <= 1.10)"),
    ]


# ----------------------------------------------------------------------------- part (d)
def part_d(args) -> list[tuple[str, str]]:
    """(d) K = 1000: NCStats (update per batch + compute) vs one H^T H, side by side.

    1 thread, float64 statistics, float32 batches of 1024 (pre-generated), d = 768, N =
    ``--large_n``; best of ``--repeats``. Also compute()'s peak memory at K = 1000 and
    K = 21,841 (d = 768), each in a fresh process (see (a) for how).
    """
    torch.set_num_threads(1)
    k, d, n, dev = 1000, 768, args.large_n, args.device
    g = torch.Generator().manual_seed(1)
    means = torch.randn(k, d, generator=g) * 2.0
    data = []
    for start in range(0, n, BATCH):
        y = torch.randint(0, k, (min(BATCH, n - start),), generator=g)
        data.append(((means[y] + torch.randn(len(y), d, generator=g) + 5.0).to(dev), y.to(dev)))

    def update():
        stats = NCStats(k, d)
        for x, y in data:
            stats.update(x, y)
        return stats

    H = torch.cat([x for x, _ in data]).double()
    update(), matmul_limit(H[:BATCH])  # warm-up
    # interleaved, best of --repeats each: on a shared machine the load changes between runs
    t_mm = t_upd = t_cmp = float("inf")
    for _ in range(args.repeats):
        t_mm = min(t_mm, best_time(lambda: matmul_limit(H), 1, dev)[0])
        t, filled = best_time(update, 1, dev)
        t_upd = min(t_upd, t)
        t_cmp = min(t_cmp, best_time(lambda: filled.compute(), 1, dev)[0])
    del H, data, filled
    RECORD.append(goal_row("nc_k1000_vs_gemm", (t_upd + t_cmp) / t_mm,
                           f"(d) K={k} d={d} N={n:,}: NCStats update + compute / one float64 H^T H"))
    RECORD.append(info_row(f"(d) K={k} N={n:,}: compute() once / H^T H", t_cmp / t_mm))
    rows = [
        (f"(d) K={k} d={d} N={n:,}: time H^T H float64", f"{t_mm:9.3f} s"),
        ("(d) NCStats update() loop", f"{t_upd:9.3f} s   ({t_upd / t_mm:.2f} x H^T H)"),
        ("(d) NCStats compute() once", f"{t_cmp:9.3f} s   ({t_cmp / t_mm:.2f} x H^T H)"),
        ("(d) time ratio NCStats total / H^T H", f"{(t_upd + t_cmp) / t_mm:9.2f} x   (goal <= 1.5 at N=100,000)"),
    ]
    if not dev.startswith("cuda"):
        for kk, reps in ((1000, 2), (21841, 1)):  # K = 21,841 takes ~1 min of one core
            peaks = [peak_in_subprocess(f"compute_k{kk}", d, "cpu") for _ in range(reps)]
            if kk == 21841:
                RECORD.append(goal_row("nc_compute_memory_k21k", max(peaks) / 2**20,
                                       f"(d) compute() peak memory, K={kk:,} d={d}", "MiB"))
            else:
                RECORD.append(info_row(f"(d) compute() peak memory, K={kk:,} d={d}", max(peaks) / 2**20, "MiB"))
            rows.append((f"(d) compute() peak memory K={kk:,} d={d} ({reps} run{'s' * (reps > 1)})",
                         " / ".join(f"{p / 2**20:.1f} MiB" for p in peaks)))  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N = 10,000 and 40,000")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--parts", default="abcd", help="which parts to run, e.g. 'd' or 'abc'")
    p.add_argument("--large_n", type=int, default=None, help="N of part (d) (default 100,000; --quick 20,000)")
    p.add_argument("--memory_runs", type=int, default=2,
                   help="fresh-process peak-memory runs of each method and size in part (a) (0: skip, e.g. in a smoke run)")
    p.add_argument("--sizes", default=None, metavar="N1,N2",
                   help="N1,N2 of parts (a) and (b) (default 50000,200000; --quick 10000,40000), e.g. 2048,4096 for a smoke run")
    p.add_argument("--dtypes", default="float64",
                   help="part (b): statistics dtypes to time against one H^T H of the same dtype, e.g. float64,float32")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: time.perf_counter; cpu: this process's CPU time (time.process_time; CPU only)")
    add_json_argument(p)
    p.add_argument("--child", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps({"peak": child_peak(args.child[0], int(args.child[1]), args.device)}))
        return
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.large_n is None:
        args.large_n = 20_000 if args.quick else 100_000
    n1, n2 = (10_000, 40_000) if args.quick else (50_000, 200_000)
    if args.sizes:
        n1, n2 = (int(n) for n in args.sizes.split(","))
    dev = args.device
    print(f"NC metrics benchmark: d={D}, K={K}, batch={BATCH}, device={dev}, torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}")  # fmt: skip
    rows: list[tuple[str, str]] = []
    if "a" in args.parts or "b" in args.parts:
        rows += parts_ab(args, n1, n2, dev)
    if "c" in args.parts:
        rows += part_c(args)
    if "d" in args.parts:
        rows += part_d(args)
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    print_goals(RECORD)
    if args.json is not None:
        setting = f"{'quick' if args.quick else 'full'} parts {args.parts}" + (f" N {n1},{n2}" if args.sizes else "")
        record("nc_metrics", setting, dev, RECORD, args.json, notes=[
            f"d={D}, K={K} (part d: K=1000, N={args.large_n:,}), batches of {BATCH}, best of {args.repeats}, "
            f"{args.clock} clock, {torch.get_num_threads()} threads (parts c, d: 1 thread on CPU)",
            "CPU peak memory: VmHWM of a fresh process with glibc's mmap threshold at 64 KiB (see the module docstring)"])


def parts_ab(args, n1: int, n2: int, dev: str) -> list[tuple[str, str]]:
    """(a) and (b): see the module docstring."""

    data = list(batches(n1, dev))  # pre-generated for timing only
    ours(data[:2]), research(data[:2])  # warm-up
    t_ours, nc1_ours = best_time(lambda: ours(data), args.repeats, dev)
    t_upd, filled = best_time(lambda: ours_update(data), args.repeats, dev)
    t_cmp, _ = best_time(lambda: filled.compute(), args.repeats, dev)
    t_res, nc1_res = best_time(lambda: research(data), args.repeats, dev)
    H = torch.cat([x for x, _ in data]).double()
    t_mm, _ = best_time(lambda: matmul_limit(H), args.repeats, dev)
    del H
    cuda = dev.startswith("cuda")
    other = {}  # dtype -> (update loop s, H^T H s) for the other dtypes of --dtypes
    for name in [d.strip() for d in args.dtypes.split(",") if d.strip() != "float64"]:
        dtype = getattr(torch, name)
        Hd = torch.cat([x for x, _ in data]).to(dtype)

        def update_dtype(dtype=dtype):
            stats = NCStats(K, D, dtype=dtype)
            for x, y in data:
                stats.update(x, y)
            return stats

        update_dtype()  # warm-up
        other[name] = (best_time(update_dtype, args.repeats, dev)[0], best_time(lambda: matmul_limit(Hd), args.repeats, dev)[0])
        del Hd
    del data

    reps = args.memory_runs
    runs = {(m, n): [peak_in_subprocess(m, n, dev) for _ in range(reps)] for m in ("ours", "research") for n in (n1, n2)} if reps else {}
    mem = {key: min(v) for key, v in runs.items()}
    mib = lambda b: f"{b / 2**20:9.1f} MiB"  # noqa: E731
    both = lambda key: " / ".join(mib(b).strip() for b in runs[key]) + f" ({reps} runs)"  # noqa: E731
    how = ("CUDA max_memory_allocated" if dev.startswith("cuda")
           else "peak RSS (VmHWM) of a fresh process, glibc mmap threshold 64 KiB")  # fmt: skip

    rows = [
        (f"(a) time NCStats  N={n1:,}", f"{t_ours:9.3f} s"),
        (f"(a) time research N={n1:,}", f"{t_res:9.3f} s"),
        ("(a) time ratio NCStats / research", f"{t_ours / t_res:9.2f} x   (goal <= 1)"),
        ("(a) nc1 NCStats vs research (rel. diff)", f"{nc1_ours:.12g} vs {nc1_res:.12g} ({abs(nc1_ours - nc1_res) / abs(nc1_res):.1e})"),
    ]
    if runs:
        rows += [
            (f"(a) peak mem NCStats  N={n1:,}", both(("ours", n1))),
            (f"(a) peak mem NCStats  N={n2:,}", both(("ours", n2))),
            (f"(a) peak mem research N={n1:,}", both(("research", n1))),
            (f"(a) peak mem research N={n2:,}", both(("research", n2))),
            (f"(a) mem growth N={n1:,}->{n2:,} NCStats", f"{mem['ours', n2] / mem['ours', n1]:9.2f} x   (goal ~1)"),
            (f"(a) mem growth N={n1:,}->{n2:,} research",
             f"{mem['research', n2] / mem['research', n1]:9.2f} x   (linear: {n2 / n1:.0f})"),  # fmt: skip
        ]
    rows += [
        (f"(b) time H^T H float64 N={n1:,}", f"{t_mm:9.3f} s"),
        ("(b) time ratio NCStats / H^T H", f"{t_ours / t_mm:9.2f} x   (goal <= 1.5)"),
        ("(b)   of which update() loop / H^T H", f"{t_upd / t_mm:9.2f} x"),
        ("(b)   of which compute() once", f"{t_cmp:9.3f} s"),
    ]
    for name, (t_u, t_m) in other.items():
        rows.append((f"(b) {name}: update() loop / one {name} H^T H", f"{t_u / t_m:9.2f} x   ({t_u:.3f} s / {t_m:.3f} s)"))
    rows.insert(0, ("(a) memory", f"{how}, above the process's memory before the run" if runs else "not measured (--memory_runs 0)"))
    RECORD.append(goal_row("nc_vs_research_time", t_ours / t_res, f"(a) NCStats / research-style code, time, N={n1:,}"))
    if runs:
        RECORD.extend([
            goal_row("nc_memory_flat", mem["ours", n2] / mem["ours", n1], f"(a) NCStats peak memory N={n1:,} -> {n2:,}"),
            info_row(f"(a) research-style peak memory N={n1:,} -> {n2:,}", mem["research", n2] / mem["research", n1]),
            goal_row("nc_memory_repeats", max(max(v) / max(min(v), 1) for k, v in runs.items() if k[0] == "ours"),
                     f"(a) NCStats peak memory, max / min of {reps} runs (worst N)"),
            info_row(f"(a) NCStats peak memory N={n2:,}", mem["ours", n2] / 2**20, "MiB")])
    RECORD.extend([
        (info_row(f"(b) NCStats update + compute / one float64 H^T H, N={n1:,}", t_ours / t_mm) if cuda
         else goal_row("nc_vs_gemm", t_ours / t_mm, f"(b) NCStats update + compute / one float64 H^T H, N={n1:,}")),
        (goal_row("nc_update_vs_gemm_float64", t_upd / t_mm, f"(b) NCStats update loop / one float64 H^T H, N={n1:,}")
         if cuda else info_row(f"(b) NCStats update loop / one float64 H^T H, N={n1:,}", t_upd / t_mm)),
    ])
    for name, (t_u, t_m) in other.items():
        what = f"(b) NCStats({name}) update loop / one {name} H^T H, N={n1:,}"
        RECORD.append(goal_row(f"nc_update_vs_gemm_{name}", t_u / t_m, what) if cuda and name == "float32"
                      else info_row(what, t_u / t_m))
    return rows


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
