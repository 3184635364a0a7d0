"""Markdown formatting of the study report: numbers, intervals, correlations, tables, labels."""

from __future__ import annotations

import math

LABEL = {"logreg": "logistic-regression probe", "linear_probe": "linear probe (AdamW head)", "full": "full FT",
         "lpft": "LP-then-FT", "lora": "LoRA", "heads": "head FT", "layer": "Layer FT", "scl": "SCL FT"}
MODEL_NAMES = {"tiny": "shipped tiny ViT (12x64, trained on Fashion-MNIST)", "dinov2": "DINOv2-S/14 (offline, 56x56)"}
ALPHA = 0.05


def pts(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def ci_text(m: float, lo: float, hi: float, n: int, signed: bool = False) -> str:
    if n == 0:
        return "-"
    f = (lambda v: f"{100 * v:+.1f}") if signed else pts
    return f"{f(m)} [{f(lo)}, {f(hi)}] (n={n})" if n > 1 else f"{f(m)} (n=1)"


def g(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}g}"


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def fmt_corr(c) -> str:
    if c is None:
        return "n/a (too few points or constant)"
    rho, p, n = c
    return f"rho = {rho:+.2f} (" + ("p < 0.001" if p < 1e-3 else f"p = {p:.3g}") + f", n = {n})"


def corr_verdict(c, expected_sign: int) -> str:
    if c is None:
        return "cannot be tested (too few points)"
    rho, p, _ = c
    if rho * expected_sign > 0 and p < ALPHA:
        return "**expected sign, p < 0.05**"
    if rho * expected_sign > 0:
        return "expected sign, not significant"
    return "**not the expected sign**"
