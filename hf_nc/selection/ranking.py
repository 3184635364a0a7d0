"""Rank candidate pre-trained models for a downstream task by the collapse of their frozen features.

The paper (Li et al., TMLR 2024) finds that a frozen pre-trained model whose penultimate
features are MORE collapsed on the downstream TRAINING data (lower NC1) linearly probes
better. :func:`rank_models` measures that for every candidate, in one streamed forward pass
per model over the training data, and ranks by ascending train NC1 of the "final" features
(what enters the classifier).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from ..features import FINAL
from ..metrics.distributed import is_main_process
from ..probe import penultimate_features
from . import _measure

RULE = ("rank by ascending NC1 of the frozen model's final (penultimate) features on the downstream "
        "TRAINING data: more collapse -> better linear probing (Li et al., TMLR 2024); candidates whose "
        "NC1 is undefined rank last")
COLUMNS = ("nc1", "nc2_etf", "cdnv")


def _safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _safe(x) for k, x in v.items()}
    return v


def _unsafe(metrics: Mapping) -> dict:
    return {k: float("nan") if v is None else v for k, v in metrics.items()}


@dataclass
class CandidateResult:
    """One candidate: its rank (1 = best), NC metrics of the frozen features on the training
    data (``layers``: ``{"0": {...}, ..., "final": {...}}``), the optional linear probe, and a
    ``note`` saying why it ranks last when its NC1 is undefined."""

    name: str
    rank: int
    nc1: float
    layers: dict[str, dict]
    linear_probe: dict | None = None
    note: str = ""

    @property
    def nc1_per_layer(self) -> dict[int, float]:
        return {int(k): v["nc1"] for k, v in self.layers.items() if k != FINAL}

    @property
    def label(self) -> str:
        """Short name: the last path component (keeping a ``random:`` prefix)."""
        prefix = _measure.RANDOM_PREFIX if self.name.startswith(_measure.RANDOM_PREFIX) else ""
        rest = self.name[len(prefix):].rstrip("/")
        return prefix + (Path(rest).name if Path(rest).exists() else rest)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho with average ranks for ties (NaN when either side is constant)."""
    def ranks(x):
        x = np.asarray(x, dtype=float)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for v in np.unique(x):  # average ranks of ties
            r[x == v] = r[x == v].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass
class RankingResult:
    """Candidates in rank order, the rule, and (with linear probes) how well NC1 predicted them.

    ``rank_correlation``: Spearman's rho between -NC1 and linear-probe test accuracy (+1: the
    NC ranking orders the candidates exactly as the probes do). Undefined NC1 counts as +inf.
    """

    candidates: list[CandidateResult]
    rule: str = RULE
    dataset: str = ""
    num_classes: int = 0
    num_train: int = 0
    num_test: int | None = None
    rank_correlation: float | None = None
    correlation_note: str = ""
    settings: dict = field(default_factory=dict)

    @property
    def best(self) -> CandidateResult:
        return self.candidates[0]

    def table(self) -> str:
        """A fixed-width text table, then the rule and the correlation."""
        probe = any(c.linear_probe for c in self.candidates)
        width = max(9, *(len(c.label) for c in self.candidates))
        head = f"{'rank':>4}  {'candidate':<{width}} " + " ".join(f"{c:>10}" for c in ("final nc1", *COLUMNS[1:]))
        head += f" {'probe acc':>10}" if probe else ""
        lines = [head]
        for c in self.candidates:
            final = c.layers[FINAL]
            row = f"{c.rank:>4}  {c.label:<{width}} " + " ".join(f"{final.get(m, float('nan')):>10.4g}" for m in COLUMNS)
            if probe:
                row += f" {c.linear_probe['test_accuracy']:>10.4f}" if c.linear_probe else f" {'-':>10}"
            lines.append(row + (f"  ({c.note})" if c.note else ""))
        lines.append(f"rule: {self.rule}")
        if self.rank_correlation is not None or self.correlation_note:
            rho = "n/a" if self.rank_correlation is None or not math.isfinite(self.rank_correlation) else f"{self.rank_correlation:+.3f}"
            lines.append(f"rank correlation (Spearman, -NC1 vs probe test accuracy): {rho}" + (f"; {self.correlation_note}" if self.correlation_note else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready (non-finite numbers become ``None``)."""
        d = asdict(self)
        d["candidates"] = [_safe(c) for c in d["candidates"]]
        return _safe(d)

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    @classmethod
    def from_dict(cls, d: Mapping) -> "RankingResult":
        d = dict(d)
        cands = []
        for c in d.pop("candidates"):
            c = dict(c)
            c["nc1"] = float("nan") if c["nc1"] is None else c["nc1"]
            c["layers"] = {k: _unsafe(v) for k, v in c["layers"].items()}
            cands.append(CandidateResult(**c))
        return cls(candidates=cands, **d)

    @classmethod
    def from_json(cls, text: str) -> "RankingResult":
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> "RankingResult":
        return cls.from_json(Path(path).read_text())


def _correlation(cands: list[CandidateResult]) -> tuple[float | None, str]:
    probed = [c for c in cands if c.linear_probe]
    n = len(probed)
    if n < 2:
        return None, "needs linear probes of at least 2 candidates"
    nc1 = [c.nc1 if math.isfinite(c.nc1) else math.inf for c in probed]
    rho = spearman([-v for v in nc1], [c.linear_probe["test_accuracy"] for c in probed])
    note = "" if math.isfinite(rho) else "undefined (all NC1 or all accuracies equal)"
    if n < 5:
        note = "; ".join(filter(None, [note, f"only {n} candidates: a perfect rank agreement happens by chance with probability "
                                                f"1/{n}! = {1 / math.factorial(n):.3g}, so this is anecdotal, not evidence"]))
    return rho, note


def rank_models(
    candidates: Sequence[_measure.Candidate] | Mapping[str, _measure.Candidate],
    dataset,
    *,
    num_classes: int | None = None,
    layers="all",
    linear_probe: bool = False,
    shots_per_class: int | None = None,
    batch_size: int = 64,
    device=None,
    seed: int = 0,
    C: float = 1.0,
    max_iter: int = 2000,
    degenerate_tol: float = 1e-10,
    progress: bool = True,
) -> RankingResult:
    """Ranks frozen pre-trained models for a downstream task by NC1 on its training data.

    Rule: ascending NC1 of each candidate's "final" features (what enters its classifier; the
    pooled final-norm output for a bare backbone) on the downstream TRAINING split, frozen,
    without augmentation, each with its own transforms (``build_transforms(model)``). The
    paper finds more collapse there goes with better linear probing. Candidates whose NC1 is
    undefined rank last, with the reason in ``note``: features (nearly) constant over the
    data (relative variation <= ``degenerate_tol``), or coinciding class means.

    Cost per candidate: one forward pass over the training data (all chosen blocks and
    "final" from the same pass; no NCC pass). With ``linear_probe`` the training features
    are taken from that same pass and kept (N x d floats); the test split costs one more pass.
    Models given by name are loaded one at a time and released.

    Under torch.distributed (``torchrun``, ``accelerate launch``) every rank streams a
    contiguous shard; statistics are summed exactly and probe features gathered in order, so
    results equal a one-process run. Pass ``device`` (e.g. ``accelerator.device``).

    Args:
        candidates: Model objects, local paths / Hub ids (``AutoModelForImageClassification``,
            else ``AutoModel``), or ``"random:<path>"`` (that architecture, randomly
            initialised with ``seed``); or ``{name: candidate}``.
        dataset: A name or path for :func:`hf_nc.data.load_image_dataset`, a ``DatasetDict``
            (``train``; ``test`` for the probe) or a training ``Dataset``.
        num_classes: K; default: from the ``label`` column.
        layers: ``"all"`` (per-block metrics too), ``"final"`` (only the final features) or
            block indices.
        linear_probe: Also fit :func:`hf_nc.probe.linear_probe`'s logistic regression (``C``,
            ``max_iter``) on the frozen train features and score it on the test split.
        shots_per_class: Few-shot training subset (dataset given by name; ``seed``).
        device: Where to run each model (moved there); default: its own device.
        progress: Progress bars (main process only).

    Returns:
        A :class:`RankingResult` (``.table()``, ``.to_json()``, ``.save(path)``).
    """
    named = list(candidates.items()) if isinstance(candidates, Mapping) else [(_measure.candidate_name(c), c) for c in candidates]
    if not named:
        raise ValueError("no candidates")
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be distinct, got {names}: pass {{name: model}}")
    train, test, k, description = _measure.resolve_data(dataset, shots_per_class=shots_per_class, seed=seed, need_test=linear_probe)
    k = num_classes or k
    block_layers = [] if layers == "final" else layers
    results = []
    for name, cand in tqdm(named, desc="candidates", disable=not (progress and is_main_process())):
        model = _measure.load_candidate(cand, seed=seed)
        _measure.device_of(model, device)
        stats, final = _measure.measure(model, train, k, layers=block_layers, batch_size=batch_size, keep_final=linear_probe, progress=progress)
        computed = {str(key): _measure.compute(s, degenerate_tol) for key, s in stats.items()}
        metrics, note = {key: m for key, (m, _) in computed.items()}, computed[FINAL][1]
        probe = None
        if linear_probe:
            test_shard = _measure.shard(test)
            xte, yte = penultimate_features(model, test_shard, batch_size=batch_size) if len(test_shard) else (np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
            xte, yte = _measure.gather_rows(xte, yte)
            probe = _measure.fit_probe(*final, xte, yte, C=C, max_iter=max_iter)
        results.append(CandidateResult(name=name, rank=0, nc1=metrics[FINAL]["nc1"], layers=metrics, linear_probe=probe, note=note))
        if not isinstance(cand, nn.Module):
            del model  # one loaded model at a time
    order = sorted(range(len(results)), key=lambda i: (not math.isfinite(results[i].nc1), results[i].nc1 if math.isfinite(results[i].nc1) else 0.0, i))
    ranked = [results[i] for i in order]
    for r, c in enumerate(ranked, 1):
        c.rank = r
    rho, note = _correlation(ranked) if linear_probe else (None, "")
    settings = dict(layers=layers if isinstance(layers, str) else list(layers), linear_probe=linear_probe, shots_per_class=shots_per_class,
                    batch_size=batch_size, seed=seed, C=C, degenerate_tol=degenerate_tol)
    return RankingResult(candidates=ranked, dataset=description, num_classes=k, num_train=len(train),
                         num_test=len(test) if linear_probe else None, rank_correlation=rho, correlation_note=note, settings=settings)
