"""``docs/RESULTS.md`` from the study's JSON records (pure reading and formatting, tested on
hand-made records).

Every choice shown is recomputed here from the selection records with the same function the
plan used (``select.SelectionTable.choose``, validation accuracy only). Every test number is a
mean over the final seeds with its 95% t interval and n; comparisons are paired over seeds with an
equivalence margin (``settings["equivalence_margin"]``). A part whose selection or final runs are
not complete is marked **PENDING** and is never stated as a finding.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Optional

from . import plan, select, stats
from .cells import Cell, status_word
from .finding_i import finding_i_tally, section_finding_i  # noqa: F401  (finding_i_tally: read as report.finding_i_tally)
from .markdown import LABEL, MODEL_NAMES, ci_text, corr_verdict, fmt_corr, g, pts, table


def tie_note(cell: "Cell", key: str, hp: float) -> str:
    """" (tie on validation with X)" when another value of ``key``'s grid has the chosen value's mean
    validation accuracy up to float rounding (the same number of correct images): ``select.py``'s tie
    rule (the smaller value) decided, not the data; the reader is told."""
    curve = cell.sel.curve(key)
    mine = next((v for h, v, _ in curve if h == hp), None)
    others = [h for h, v, _ in curve if h != hp and mine is not None and abs(v - mine) <= 1e-9]
    return f" (tie on validation with {', '.join(f'{h:g}' for h in others)})" if others else ""


def describe_choice(ch: select.Choice, family: str) -> str:
    what = LABEL.get(ch.method, ch.method) + ("" if ch.block is None else f" @ block {ch.block}") + (f" [{ch.variant}]" if ch.variant else "")
    hp = f"C = {ch.hp:g}" if ch.method == "logreg" else f"LR {ch.hp:g}"
    if ch.head_factor is not None:
        hp += f", head LR {ch.hp * ch.head_factor:g}"
    return f"{what} ({hp})"


# ---------------------------------------------------------------------------------------------- sections
def section_protocol(s: dict, meta: dict) -> list[str]:
    margin = 100 * s["equivalence_margin"]
    lines = ["## Protocol", "",
             f"- **Splits.** Few-shot training set (the cell's shots per class, drawn by the run's seed); a **validation** split of "
             f"{s['val_shots']} images per class drawn by the same seed from the training images *outside* the few-shot subset "
             "(`--validation_shots_per_class`); the **test** split (digits: the fixed 450-image split; Fashion-MNIST: a seeded "
             f"stratified subset of {plan.TASKS['fmnist']['max_eval']} test images per seed).",
             f"- **Selection stage** (validation only): seeds {s['selection_seeds']} (never reported). Every choice (learning rate, "
             "full FT's head LR, the block of Layer/SCL FT, the SCL variant, the logistic-regression C, LP-then-FT's probe) is the "
             "highest mean validation accuracy over these seeds (`recipes/study/select.py`); two values with the same number of correct "
             "validation images are a tie, which goes to the smaller value (between configurations: the earlier one, e.g. the "
             "default variant) and is marked *tie on validation* below. Selection records hold no test number "
             "(dropped before they are written), so no choice can read one; `tests/test_transfer_study.py` poisons the test labels "
             "and checks that every choice stays the same.",
             f"- **Final stage**: each chosen configuration with seeds {s['final_seeds'][0]}..{s['final_seeds'][-1]} "
             f"(n = {len(s['final_seeds'])}); the test split is read once per final run.",
             f"- **Equal tuning.** Every method gets a grid of {s['grid_size']} values in half-decade steps around its prior "
             f"(below), extended by up to {s['grid_extend']} value(s) while the best value is at an edge; a choice still at an edge is "
             "flagged **edge**. Full FT also chooses its head LR (factor " + ", ".join(f"x{f:g}" for f in s["full_head_factors"])
             + " of its LR): it gets more configurations than any other method, which favours the baseline. LP-then-FT: a "
             "logistic-regression head (C chosen on validation) then full FT with the LR grid. Layer FT and SCL FT: the grid at every "
             "block; the block is chosen with the LR.",
             "- **Budget** (fixed, the same for every method, not tuned): epochs " + ", ".join(
                 f"{fam}: " + ", ".join(f"{k} shots {v}" for k, v in e.items()) for fam, e in s["epochs"].items())
             + "; batch " + ", ".join(f"{k} shots {v}" for k, v in s["batch"].items()) + "; AdamW, cosine schedule, 5% warm-up. "
             "Layer FT, SCL FT, head FT and the AdamW linear probe train from the frozen-prefix cache (`hf_nc.prefix_cache`: "
             "the frozen blocks run once per image; equal to the uncached run up to float rounding, tested).",
             f"- **Statistics.** Mean test accuracy with its 95% Student-t interval over seeds; comparisons are paired differences over "
             f"seeds (same training images and test split) with their 95% t interval. *Equivalent*: the interval inside "
             f"±{margin:.1f} points; *not worse* (= **matches**): its lower end above -{margin:.1f}; *better* / *worse*: it excludes 0 "
             f"and is not inside ±{margin:.1f} (a difference of that sign: its size is what the interval says, it need not exceed "
             "the margin); otherwise *inconclusive*. Correlations are Spearman's, on configuration means (not pooled runs).", ""]
    rows = []
    for fam in sorted({plan.family(c[0]) for c in s["cells"]}):
        for m in s["methods"]:
            grid = plan.method_grid(s, "dinov2" if fam == "dinov2" else "tiny", m)
            rows.append([fam, LABEL.get(m, m), ", ".join(f"{v:g}" for v in grid) + (" (C)" if m == "logreg" else "")])
    lines += ["Initial grids (learning rate; C for the logistic-regression probe):", ""] + table(["model", "method", "grid"], rows) + [""]
    if s["scl_variants"]:
        lines += ["SCL variants compared on validation at SCL's chosen block: default (`add`, `delta`, `pre_norm`), "
                  + ", ".join(f"`{v}` ({' '.join(plan.SCL_VARIANTS[v])}" + (", gate fixed at 1 and frozen: h_L + h_l" if v == "plain" else "")
                              + ")" for v in s["scl_variants"])
                  + "".join(f". Not run: `{k}`: {v}" for k, v in plan.SCL_NOT_RUNNABLE.items()) + ".", ""]
    return lines


def caveats(cell: Cell, *choices) -> str:
    """What weakens a finding of ``cell`` read from ``choices``: an in-domain cell, or a learning
    rate still at its grid's edge (the optimum not bracketed). "" when nothing does."""
    notes = []
    why = plan.IN_DOMAIN.get((plan.family(cell.model), cell.cell[1]))
    if why:
        notes.append(why)
    edge = [LABEL.get(ch.method, ch.method) for ch in choices if ch is not None and ch.at_edge]
    if edge:
        notes.append("LR at the grid's edge for " + ", ".join(dict.fromkeys(edge)) + " (optimum not bracketed)")
    return f" [caveat: {'; '.join(notes)}]" if notes else ""


def section_headline(cell: Cell) -> tuple[list[str], list[str], bool]:
    """Chosen configurations on test, paired comparisons. Returns lines, findings, complete."""
    s, margin = cell.s, cell.s["equivalence_margin"]
    lines = [f"### {MODEL_NAMES.get(cell.model, cell.model)} · `{cell.cell[1]}` · {cell.cell[2]} shots", ""]
    if (plan.family(cell.model), cell.cell[1]) in plan.IN_DOMAIN:
        lines += [f"*{plan.IN_DOMAIN[(plan.family(cell.model), cell.cell[1])]}: its comparisons are not evidence about transfer.*", ""]
    fam = plan.family(cell.model)
    chosen = {m: cell.choice(m) for m in s["methods"]}
    full_params = cell.params(chosen.get("full"))
    rows = []
    for m in s["methods"]:
        ch = chosen[m]
        if ch is None:
            rows.append([LABEL.get(m, m), "-", "-", "-", "-", status_word(cell, None)])
            continue
        p = cell.params(ch)
        share = f"{100 * p / full_params:.1f}%" if p and full_params else "-"
        edge = " **edge**" if ch.at_edge else ""
        rows.append([describe_choice(ch, fam) + edge, f"{pts(ch.val_mean)} (n={ch.n})", ci_text(*stats.mean_ci(cell.runs(ch).values())),
                     f"{p:,}" if p else "-", share, status_word(cell, ch)])
    ch = chosen.get("scl")
    best = scl_best_variant(cell)
    if best is not None:
        if best.variant:
            p = cell.params(best)
            rows.append([describe_choice(best, fam) + " (best SCL variant on validation)" + (" **edge**" if best.at_edge else ""),
                         f"{pts(best.val_mean)} (n={best.n})", ci_text(*stats.mean_ci(cell.runs(best).values())),
                         f"{p:,}" if p else "-", f"{100 * p / full_params:.1f}%" if p and full_params else "-", status_word(cell, best)])
    lines += table(["chosen on validation", "val acc % (selection seeds)", "test acc % [95% CI] (final seeds)", "trained params",
                    "vs full FT", "status"], rows) + [""]
    # paired comparisons
    pairs = [("scl", "full"), ("layer", "full"), ("scl", "layer"), ("lpft", "full"), ("lora", "full"), ("heads", "full"),
             ("logreg", "full"), ("linear_probe", "logreg")]
    rows, findings = [], []
    headline_complete = all(cell.complete(chosen.get(m)) for m in ("full", "layer", "scl") if m in s["methods"])
    for a, b in pairs:
        if a not in s["methods"] or b not in s["methods"]:
            continue
        ca, cb = chosen[a], chosen[b]
        if ca is None or cb is None:
            rows.append([f"{LABEL[a]} - {LABEL[b]}", "-", "PENDING"])
            continue
        d = stats.paired(cell.runs(ca), cell.runs(cb))
        complete = cell.complete(ca) and cell.complete(cb)
        v = stats.verdict(d[1], d[2], margin, d[3])
        rows.append([f"{LABEL[a]} - {LABEL[b]}", ci_text(*d, signed=True), v if complete else f"PENDING ({v} so far)"])
        if complete and headline_complete and (a, b) in (("scl", "full"), ("layer", "full"), ("scl", "layer")):
            findings.append(f"{cell.name}: {LABEL[a]} - {LABEL[b]} = {ci_text(*d, signed=True)} points -> {v}{caveats(cell, ca, cb)}")
    if best is not None and best.variant:  # the validation-best SCL variant against the default, same block and seeds
        d = stats.paired(cell.runs(best), cell.runs(ch))
        complete = cell.complete(best) and cell.complete(ch)
        v = stats.verdict(d[1], d[2], margin, d[3])
        rows.append([f"SCL FT [{best.variant}] - SCL FT", ci_text(*d, signed=True), v if complete else f"PENDING ({v} so far)"])
        if complete:
            findings.append(f"{cell.name}: SCL variant `{best.variant}` (best on validation) - the default, at block {best.block}: "
                            f"{ci_text(*d, signed=True)} points -> {v}{caveats(cell, best, ch)}")
    lines += [f"Paired differences (test accuracy points, same seeds; margin ±{100 * margin:.1f}):", ""]
    lines += table(["comparison", "mean [95% CI] (n)", "verdict"], rows) + [""]
    # the paper's goal: SCL FT or Layer FT matches full FT with >= 90% fewer trained parameters
    if chosen.get("full") is not None and full_params:
        for m in ("scl", "layer"):
            ch = chosen.get(m)
            if ch is None or m not in s["methods"]:
                continue
            d = stats.paired(cell.runs(ch), cell.runs(chosen["full"]))
            p = cell.params(ch)
            small = p is not None and p <= 0.10 * full_params
            ok = stats.matches(d[1], margin) and small
            word = ("**yes**" if ok else "**no**") if headline_complete else "PENDING"
            lines.append(f"- Goal, {LABEL[m]} matches full FT (lower end of the paired CI above -{100 * margin:.1f} points) with "
                         f"<= 10% of its trained parameters ({100 * p / full_params:.1f}%): {word}" if p else f"- Goal, {LABEL[m]}: PENDING")
            if headline_complete:
                findings.append(f"{cell.name}: goal ({LABEL[m]} matches full FT within {100 * margin:.1f} points with <= 10% of its "
                                f"parameters): {'yes' if ok else 'no'} (paired difference {ci_text(*d, signed=True)})"
                                f"{caveats(cell, ch, chosen['full'])}")
        lines.append("")
    return lines, findings, headline_complete


def scl_best_variant(cell: Cell) -> Optional[select.Choice]:
    """The best SCL variant on validation at SCL's chosen block (the default among them), once SCL's
    choice and every variant's grid are complete; None before that, or without variants."""
    ch = cell.choice("scl")
    if ch is None or not cell.s["scl_variants"]:
        return None
    return cell.choice("scl_variants", [plan.config_key("scl", ch.block, v) for v in [""] + list(cell.s["scl_variants"])])


def section_scl_default(cells: list[Cell]) -> tuple[list[str], list[str], bool]:
    """SCL's documented default from validation: per cell, each variant's best validation accuracy minus
    the default's at SCL's chosen block; the variant ahead on average by more than the margin would
    replace it. Returns lines, findings, and whether a DINOv2 cell is among those compared."""
    s = cells[0].s if cells else {}
    variants = list(s.get("scl_variants") or [])
    if not variants:
        return [], [], True
    margin = s["equivalence_margin"]
    lines = ["## SCL's default variant (validation only)", "",
             "Best validation accuracy (mean over the selection seeds, at its own best LR) of each SCL variant minus the default's "
             "(`add`, `delta`, `pre_norm`), at each cell's chosen SCL block, in points. The test split plays no part here; the "
             "validation-best variant's paired test difference from the default is in its cell's headline table.", ""]
    rows, diffs, names = [], defaultdict(list), []
    for cell in cells:
        best = scl_best_variant(cell) if cell.ready else None
        if best is None:
            rows.append([cell.name, *["-"] * len(variants), "PENDING"])
            continue
        ch = cell.choice("scl")
        base = cell.sel.best_hp(plan.config_key("scl", ch.block)).mean
        row = [f"{cell.name} (block {ch.block})"]
        for v in variants:
            dv = cell.sel.best_hp(plan.config_key("scl", ch.block, v)).mean - base
            diffs[v].append(dv)
            row.append(f"{100 * dv:+.1f}")
        rows.append(row + [f"`{best.variant or 'default'}`"])
        names.append(cell.name)
    if names:
        rows.append([f"mean over {len(names)} cell{'s' if len(names) > 1 else ''}", *[f"{100 * sum(diffs[v]) / len(diffs[v]):+.1f}" for v in variants], ""])
    lines += table(["cell", *[f"`{v}`" for v in variants], "best"], rows) + [""]
    with_dinov2 = any(plan.family(c.model) == "dinov2" for c in cells if c.name in names)
    findings = []
    if names:
        mean = {v: sum(diffs[v]) / len(diffs[v]) for v in variants}
        top = max(variants, key=lambda v: mean[v])
        wins = sum(1 for c in cells if c.name in names and scl_best_variant(c).variant == "")
        text = f"SCL's default variant, validation over {len(names)} cell{'s' if len(names) > 1 else ''} ({', '.join(names)}): the default is best in {wins}; "
        if mean[top] > margin:
            text += (f"`{top}` is ahead of it on average by {100 * mean[top]:+.1f} points, more than the {100 * margin:.1f}-point "
                     f"margin: the evidence favours `{top}` as the default")
        else:
            text += (f"no variant is ahead of it on average by more than the {100 * margin:.1f}-point margin (closest: `{top}`, "
                     f"{100 * mean[top]:+.1f} points): the evidence does not favour changing the default")
        left = [c.name for c in cells if c.name not in names]
        if left:  # the verdict is over the compared cells only, not the plan's
            text += f" (not compared yet: {', '.join(left)})"
        lines += [f"{text}." + ("" if with_dinov2 else " **PENDING**: no DINOv2-S cell compared yet."), ""]
        if with_dinov2 or not s.get("dinov2"):
            findings.append(text)
    return lines, findings, with_dinov2 or not s.get("dinov2")


def section_skip(cell: Cell) -> tuple[list[str], list[str], bool]:
    s, margin = cell.s, cell.s["equivalence_margin"]
    lines = [f"### {cell.name}", ""]
    rows, diffs, complete = [], [], True
    counts = defaultdict(int)
    used = []  # the block choices the finding rests on (for its caveats)
    per_block = []  # ({seed: SCL test acc}, {seed: Layer test acc}) of each complete block
    for b in plan.blocks_of(s, cell.model, "scl"):
        cl, cs = cell.block_choice("layer", b), cell.block_choice("scl", b)
        if cl is None or cs is None:
            rows.append([b, "-", "-", "-", "PENDING (selection)"])
            complete = False
            continue
        used += [cl, cs]
        d = stats.paired(cell.runs(cs), cell.runs(cl))
        ok = cell.complete(cl) and cell.complete(cs)
        complete &= ok
        v = stats.verdict(d[1], d[2], margin, d[3])
        if ok:
            counts[v] += 1
            diffs.append(d[0])
            per_block.append((cell.runs(cs), cell.runs(cl)))
        rows.append([b, f"{ci_text(*stats.mean_ci(cell.runs(cl).values()))} (LR {cl.hp:g}{' **edge**' if cl.at_edge else ''}"
                        f"{tie_note(cell, cl.key, cl.hp)})",
                     f"{ci_text(*stats.mean_ci(cell.runs(cs).values()))} (LR {cs.hp:g}{' **edge**' if cs.at_edge else ''}"
                     f"{tie_note(cell, cs.key, cs.hp)})",
                     ci_text(*d, signed=True),
                     v if ok else f"PENDING ({v} so far)"])
    lines += table(["block", "Layer FT test % [CI]", "SCL FT test % [CI]", "SCL - Layer, paired [CI]", "verdict"], rows) + [""]
    findings = []
    if diffs:
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        m = stats.mean_ci(diffs)
        # the blocks share their seeds (same few-shot draws, same test split): the mean over blocks is
        # inferred over seeds, each seed's SCL - Layer difference averaged over the blocks
        seeds = sorted(set.intersection(*(set(a) & set(b) for a, b in per_block)))
        ps = stats.mean_ci([sum(a[x] - b[x] for a, b in per_block) / len(per_block) for x in seeds])
        pv = stats.verdict(ps[1], ps[2], margin, ps[3])
        lines += [f"Over the {len(diffs)} complete blocks: {summary}; mean over the blocks, paired over seeds (each seed's mean over "
                  f"the blocks): {ci_text(*ps, signed=True)} -> {pv}; the per-block differences' spread: {ci_text(*m, signed=True)} "
                  "(blocks as units, a description: the blocks are not independent samples)."
                  + ("" if complete else " **PENDING**: not every block is complete."), ""]
        if complete:
            findings.append(f"{cell.name}: SCL - Layer FT at the same block, over {len(diffs)} blocks: {summary}; mean over blocks, "
                            f"paired over seeds {ci_text(*ps, signed=True)} -> {pv}{caveats(cell, *used)}")
    return lines, findings, complete


def section_selection(cell: Cell) -> list[str]:
    s = cell.s
    lines = [f"### {cell.name}", ""]
    rows = []
    for b in plan.blocks_of(s, cell.model, "layer"):
        row = [b]
        for m in ("layer", "scl"):
            key = plan.config_key(m, b)
            best = cell.sel.best_hp(key)
            if m == "scl" and b not in plan.blocks_of(s, cell.model, "scl"):
                row += ["(last block: no SCL)"]
                continue
            curve = cell.sel.curve(key)
            row.append(("; ".join(f"{hp:g}: {pts(v)}" for hp, v, _ in curve) or "-")
                       + (f" -> **{best.hp:g}**" + (" **edge**" if best.at_edge and cell.flags.get(key) else "")
                          + tie_note(cell, key, best.hp) if best else "")
                       + ("" if cell.flags.get(key) else " (running)"))
        rows.append(row)
    if "layer" in s["methods"] and "scl" in s["methods"]:
        lines += ["Mean validation accuracy (%) per learning rate, over the selection seeds:", ""]
        lines += table(["block", "Layer FT", "SCL FT"], rows) + [""]
    rows = []
    for m in s["methods"]:
        if m in ("layer", "scl"):
            continue
        for key in cell.keys(m):
            curve = cell.sel.curve(key)
            best = cell.sel.best_hp(key)
            rows.append([key, "; ".join(f"{hp:g}: {pts(v)}" for hp, v, _ in curve) or "-",
                         (f"{best.hp:g}" + (" **edge**" if best.at_edge and cell.flags.get(key) else "") + tie_note(cell, key, best.hp))
                         if best else "-",
                         "complete" if cell.flags.get(key) else "running"])
    lines += table(["configuration", "validation acc % per value", "best", "grid"], rows) + [""]
    ch = cell.choice("scl")
    if ch is not None and s["scl_variants"]:
        rows = []
        for v in [""] + list(s["scl_variants"]):
            key = plan.config_key("scl", ch.block, v)
            best = cell.sel.best_hp(key)
            rows.append([v or "default (add, delta, pre_norm)", f"{pts(best.mean)} (LR {best.hp:g}, n={best.n})" if best else "-",
                         "complete" if cell.flags.get(key) else "running"])
        best = scl_best_variant(cell)
        lines += [f"SCL variants at block {ch.block} (validation):", ""] + table(["variant", "best val acc %", "grid"], rows) + [""]
        if best is not None:
            top = cell.sel.best_hp(best.key).mean
            tied = [v or "default" for v in [""] + list(s["scl_variants"]) if plan.config_key("scl", ch.block, v) != best.key
                    and (b := cell.sel.best_hp(plan.config_key("scl", ch.block, v))) is not None and abs(b.mean - top) <= 1e-9]
            lines += [f"Best on validation: `{best.variant or 'default'}`"
                      + (f" (tie on validation with {', '.join(f'`{v}`' for v in tied)})" if tied else "")
                      + (" (the documented default)." if not best.variant else " (differs from the documented default; see its final runs above).")
                      + " Validation over the selection seeds only: a ranking, not a significance test.", ""]
    return lines


def section_finding_ii(cells: list[Cell], complete: set) -> tuple[list[str], list[str]]:
    lines = ["## Finding (ii): more collapse on the training data goes with higher test accuracy", "",
             "Spearman correlation of mean train NC1 (penultimate features of the fine-tuning images after training) and mean "
             "test accuracy over the final seeds, with **configurations as the units** (each method, and each block of Layer/SCL "
             "FT, at its chosen LR), and within one method across its blocks. Paper: negative. Only configurations with all final "
             "seeds enter.", ""]
    rows, findings = [], []
    for cell in cells:
        means = {}
        for (key, hp), runs in cell.final.items():
            if len(runs) >= cell.nfinal and not (key.startswith("scl@") and "[" in key):  # SCL variants: not a new configuration
                nc = stats.mean_ci([r.get("train_nc1") for r in runs.values()])[0]
                acc = stats.mean_ci([r.get("test_accuracy") for r in runs.values()])[0]
                means[key] = (nc, acc)
        if not means:
            continue
        groups = [("all configurations", list(means))]
        groups += [(f"{LABEL[m]} across blocks", [k for k in means if k.startswith(m + "@")]) for m in ("layer", "scl")]
        for what, keys in groups:
            c = stats.spearman([means[k][0] for k in keys], [means[k][1] for k in keys])
            done = cell.name in complete
            rows.append([cell.name, what, fmt_corr(c), corr_verdict(c, -1) if done else "PENDING (cell incomplete)"])
            if what == "all configurations" and c is not None and done:
                findings.append(f"(ii) {cell.name}, configurations: {fmt_corr(c)}{caveats(cell)}")
    if not rows:
        return lines + ["**PENDING**: no configuration has all its final seeds yet.", ""], findings
    return lines + table(["cell", "units", "correlation", "verdict"], rows) + [""], findings


def _plot_blocks(cell: Cell, path: Path) -> bool:
    pts_ = {}
    for m in ("layer", "scl"):
        xs = []
        for b in plan.blocks_of(cell.s, cell.model, m):
            ch = cell.block_choice(m, b)
            if ch is None:
                continue
            test = stats.mean_ci(cell.runs(ch).values())
            xs.append((b, ch.val_mean, test))
        if xs:
            pts_[m] = xs
    if not pts_:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for m, marker in (("layer", "o"), ("scl", "s")):
        xs = pts_.get(m, [])
        ax.plot([b for b, _, _ in xs], [v for _, v, _ in xs], marker + ":", alpha=0.5, label=f"{LABEL[m]} (validation, selection seeds)")
        tx = [(b, t) for b, _, t in xs if t[3]]
        if tx:
            ax.errorbar([b for b, _ in tx], [t[0] for _, t in tx], yerr=[[t[0] - t[1] for _, t in tx], [t[2] - t[0] for _, t in tx]],
                        fmt=marker + "-", capsize=3, label=f"{LABEL[m]} (test, 95% CI)")
    ax.set(xlabel="tuned block", ylabel="accuracy", title=cell.name)
    ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def section_status(s: dict, records: dict) -> list[str]:
    """Runs done per cell and step (planned: what the plan holds so far; final steps grow as
    selections complete, grids grow at edges)."""
    _, status = plan.expand(s, records)
    totals = plan.planned_total(s)
    steps = ("headline_selection", "headline_final", "others_selection", "others_final", "blocks_final",
             "variants_selection", "variants_final")
    rows = []
    for cell in s["cells"]:
        name = plan.cell_name(cell)
        st = status.get(name, {})
        row = [name] + [f"{st[k]['done']}/{st[k]['planned']}" + (f" ({st[k]['failed']} failed)" if st[k].get("failed") else "")
                        if k in st else "-" for k in steps]
        tot = totals.get(name, {})
        done = sum(v["done"] for v in st.values())
        row.append(f"{done} / ~{tot.get('selection', 0) + tot.get('final', 0)}")
        rows.append(row)
    lines = ["## Study status", "", "Runs that succeeded / runs planned so far, per step (a final step is planned once every "
             "run of its selection has succeeded; a failed run is retried by the next invocation; the last column: all runs of the cell against the plan's size without grid extensions).", ""]
    lines += table(["cell", "headline selection", "headline final", "other methods: selection", "final", "every block: final",
                    "SCL variants: selection", "final", "cell total"], rows) + [""]
    fi = status.get("finding_i", {}).get("pretrain")
    if fi:
        lines += [f"Finding (i): {fi['done']}/{fi['planned']} pre-training runs.", ""]
    return lines


# ---------------------------------------------------------------------------------------------- document
def write_report(records: dict, settings: dict, out_md: str | Path, plots_dir: str | Path, meta: Optional[dict] = None) -> Path:
    """Writes the markdown report (and PNG plots in ``plots_dir``) from ``{run id: record}``; returns its path."""
    meta = meta or {}
    s = settings
    out_md, plots = Path(out_md), Path(plots_dir)
    try:
        rel = plots.resolve().relative_to(out_md.parent.resolve()).as_posix()
    except ValueError:
        rel = plots.resolve().as_posix()
    ok = [r for r in records.values() if r.get("status") == "ok"]
    failed = [r for r in records.values() if r.get("status") != "ok"]
    cells = [Cell(s, c, records) for c in s["cells"]]
    compute = sum(r.get("wall_time_s", 0.0) for r in ok)
    body, findings, pending = [], [], []
    complete_cells = set()

    body += ["## Headline: SCL FT vs Layer FT vs full FT (and every other method), chosen on validation, tested once", ""]
    for cell in cells:
        if not cell.ready:
            body += [f"### {cell.name}", "", "**PENDING**: the model is not built yet.", ""]
            pending.append(f"{cell.name}: everything (model not built)")
            continue
        part, f, complete = section_headline(cell)
        body += part
        findings += f
        if complete:
            complete_cells.add(cell.name)
        if not complete:
            pending.append(f"{cell.name}: headline (selection or final seeds of full / Layer / SCL FT)")
    body += ["## The skip's own test: SCL FT at block l against Layer FT at block l", "",
             "Each block's Layer FT and SCL FT at their own learning rate (chosen on validation at that block), the same final "
             "seeds; the difference isolates the skip connection.", ""]
    for cell in cells:
        if "scl" not in s["methods"] or "layer" not in s["methods"]:
            continue
        if cell.ready and any(cell.block_choice("scl", b) for b in plan.blocks_of(s, cell.model, "scl")):
            part, f, complete = section_skip(cell)
            body += part
            findings += f
            if not complete:
                complete_cells.discard(cell.name)
                pending.append(f"{cell.name}: the every-block skip test")
            if _plot_blocks(cell, plots / f"blocks_{cell.name.replace('/', '_')}.png"):
                body += [f"![Layer/SCL FT per block, {cell.name}]({rel}/blocks_{cell.name.replace('/', '_')}.png)", ""]
        elif cell.ready:
            complete_cells.discard(cell.name)
            body += [f"### {cell.name}", "", "**PENDING** (selection at every block still running).", ""]
            pending.append(f"{cell.name}: the every-block skip test")
    part, f, compared = section_scl_default([c for c in cells if "scl" in s["methods"]])
    body += part
    findings += f
    if not compared:
        pending.append("SCL's default variant: no DINOv2-S cell compared yet")
    part, f = section_finding_ii(cells, complete_cells)
    body += part
    findings += f
    part, f = section_finding_i(s, records)
    body += part
    findings += f
    if s.get("pretrain") and not f:
        pending.append("finding (i): pre-training variants and probes")
    body += ["## Selection details (validation only)", ""]
    for cell in cells:
        if cell.ready:
            body += section_selection(cell)

    lines = ["# Transfer study: neural collapse and transfer learning at small scale", "",
             f"Generated by `recipes/transfer_study.py` (mode `{s['mode']}`) from {len(ok)} run results ({len(failed)} failed); "
             f"compute summed over runs: {compute / 3600:.1f} h (CPU, one torch thread per run).",
             "Paper: Li et al., TMLR 2024, *Understanding and Improving Transfer Learning of Deep Models via Neural Collapse*.", ""]
    if pending:
        lines += ["> **STATUS: PARTIAL — NOT THE FINDING.** The study is still running (it resumes where it stopped). Parts marked "
                  "**PENDING** below are partial results: a choice whose selection grid is incomplete, or a mean over fewer than "
                  f"{len(s['final_seeds'])} final seeds, is shown only to track progress and must not be cited. Pending:", ">"]
        lines += [f"> - {p}" for p in pending] + [""]
    for note in meta.get("notes", []):
        lines.append(f"> **Note:** {note}")
    if meta.get("notes"):
        lines.append("")
    lines += ["## Findings supported by complete parts", ""]
    lines += [f"- {x}" for x in findings] or ["- None yet: no part of the study is complete."]
    lines += ["", "Only comparisons whose selection and all final seeds are complete are listed here; read each with its CI "
              "and the margin (see Protocol).", ""]
    lines += section_protocol(s, meta) + body
    lines += section_status(s, records)
    if failed:
        lines += ["## Failed runs", ""] + [f"- `{r['id']}`: {r.get('error', '?')}" for r in failed] + [""]
    if meta.get("command"):
        lines += ["## Reproduce / resume", "", "The study is resumable (one JSON per run under its `--out_dir`); the same command "
                  "continues it, and `report` rewrites this file from the results:", "", "```", meta["command"],
                  meta["command"].replace("transfer_study.py", "transfer_study.py report", 1), "```", ""]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(lines))
    return out_md
