"""Rank candidate pre-trained models for a downstream task by transferability scores of their frozen features.

The paper (Li et al., TMLR 2024) finds that a frozen pre-trained model whose penultimate
features are MORE collapsed on the downstream TRAINING data (lower NC1) linearly probes
better. :func:`rank_models` measures that for every candidate, in one streamed forward pass
per model over the training data, and by default ranks by ascending train NC1 of the "final"
features (what enters the classifier). With ``scores=[...]`` it computes any scores of
:data:`hf_nc.selection.scores.SCORES` (LogME, NCTI, H-score, ...) from that same pass, ranks by
``rank_by`` and reports how each score's ranking agrees with probe or given fine-tuned
accuracies (Kendall tau, weighted tau, Spearman, top-1 regret).
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
from ..metrics import json_safe
from ..metrics.distributed import is_main_process
from ..probe import penultimate_features
from . import _measure
from . import scores as _scores
from .correlation import merge_ties, score_correlations

RULE = ("rank by ascending NC1 of the frozen model's final (penultimate) features on the downstream "
        "TRAINING data: more collapse -> better linear probing (Li et al., TMLR 2024); candidates whose "
        "NC1 is undefined rank last")
COLUMNS = ("nc1", "nc2_etf", "cdnv")


def _unsafe(metrics: Mapping) -> dict:
    return {k: float("nan") if v is None else (_unsafe(v) if isinstance(v, Mapping) else v) for k, v in metrics.items()}


def rule_for(score: str) -> str:
    """The ranking rule's text for ``rank_by=score``."""
    if score == "nc1":
        return RULE
    spec = _scores.get_score(score)
    order = "descending" if spec.direction > 0 else "ascending"
    return (f"rank by {order} {score} ({spec.description}) of the frozen model's final features on the downstream TRAINING "
            f"data; candidates whose {score} is undefined rank last")


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
    scores: dict[str, float] = field(default_factory=dict)
    block_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    score_errors: dict[str, str] = field(default_factory=dict)

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

    ``rank_correlation``: Spearman's rho between the oriented ``rank_by`` score (-NC1 by
    default) and the ground truth (+1: the ranking orders the candidates exactly as the
    ground truth does). An undefined score ranks last.
    ``score_correlations``: ``{score: {kendall_tau, weighted_tau, spearman, top1_regret, n}}``
    for every requested score against ``ground_truth`` (``"linear_probe"``: the probes' test
    accuracy; ``"provided"``: the ``accuracies`` passed in, e.g. fine-tuned accuracies).
    ``block_correlations``: the same per candidate over its blocks (``block_accuracies``).
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
    rank_by: str = "nc1"
    score_names: list[str] = field(default_factory=lambda: ["nc1"])
    ground_truth: str = ""
    score_correlations: dict[str, dict] = field(default_factory=dict)
    block_correlations: dict[str, dict] = field(default_factory=dict)

    @property
    def best(self) -> CandidateResult:
        return self.candidates[0]

    def labels(self) -> dict[str, str]:
        """``{name: label}``: each candidate's short :attr:`CandidateResult.label`, or its full name
        where candidates share one (``/a/ckpt`` and ``/b/ckpt`` would both read ``ckpt``, and a
        plot keyed by label drew one curve for both)."""
        short = [c.label for c in self.candidates]
        return {c.name: c.label if short.count(c.label) == 1 else c.name for c in self.candidates}

    def table(self) -> str:
        """A fixed-width text table, then the rule and the correlation."""
        probe = any(c.linear_probe for c in self.candidates)
        labels = self.labels()
        width = max(9, *(len(v) for v in labels.values()))
        head = f"{'rank':>4}  {'candidate':<{width}} " + " ".join(f"{c:>10}" for c in ("final nc1", *COLUMNS[1:]))
        head += f" {'probe acc':>10}" if probe else ""
        lines = [head]
        for c in self.candidates:
            final = c.layers[FINAL]
            row = f"{c.rank:>4}  {labels[c.name]:<{width}} " + " ".join(f"{final.get(m, float('nan')):>10.4g}" for m in COLUMNS)
            if probe:
                row += f" {c.linear_probe['test_accuracy']:>10.4f}" if c.linear_probe else f" {'-':>10}"
            lines.append(row + (f"  ({c.note})" if c.note else ""))
        extra = [n for n in self.score_names if n not in COLUMNS]
        if extra:
            lines.append("")
            lines.append(f"{'rank':>4}  {'candidate':<{width}} " + " ".join(f"{n:>16}" for n in extra))
            for c in self.candidates:
                lines.append(f"{c.rank:>4}  {labels[c.name]:<{width}} " + " ".join(f"{c.scores.get(n, float('nan')):>16.5g}" for n in extra))
        lines.append(f"rule: {self.rule}")
        if self.rank_correlation is not None or self.correlation_note:
            rho = "n/a" if self.rank_correlation is None or not math.isfinite(self.rank_correlation) else f"{self.rank_correlation:+.3f}"
            truth = "given accuracy" if self.ground_truth == "provided" else "probe test accuracy"
            sign = "-" if _scores.get_score(self.rank_by).direction < 0 else ""
            lines.append(f"rank correlation (Spearman, {sign}{self.rank_by} vs {truth}): {rho}" + (f"; {self.correlation_note}" if self.correlation_note else ""))
        if len(self.score_correlations) > 1 or (self.score_correlations and self.rank_by not in self.score_correlations):
            lines.append(f"{'score':>18} {'kendall':>8} {'w. tau':>8} {'spearman':>8} {'regret':>8}")
            for n, c in self.score_correlations.items():
                lines.append(f"{n:>18} " + " ".join(f"{c[k]:>+8.3f}" if isinstance(c[k], float) and math.isfinite(c[k]) else f"{'n/a':>8}"
                                                     for k in ("kendall_tau", "weighted_tau", "spearman", "top1_regret")))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready (non-finite numbers become ``None``)."""
        d = asdict(self)
        return json_safe(d)

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
            c["scores"] = _unsafe(c.get("scores", {}))
            c["block_scores"] = _unsafe(c.get("block_scores", {}))
            cands.append(CandidateResult(**c))
        for key in ("score_correlations", "block_correlations"):
            d[key] = _unsafe(d.get(key, {}))
        return cls(candidates=cands, **d)

    @classmethod
    def from_json(cls, text: str) -> "RankingResult":
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> "RankingResult":
        return cls.from_json(Path(path).read_text())


def _correlation(cands: list[CandidateResult], truth: Mapping[str, float], rank_by: str) -> tuple[float | None, str]:
    probed = [c for c in cands if c.name in truth]
    n = len(probed)
    if n < 2:
        return None, "needs the accuracy of at least 2 candidates"
    rho = spearman(merge_ties([_scores.oriented(rank_by, c.scores.get(rank_by, math.nan)) for c in probed]), [truth[c.name] for c in probed])
    note = "" if math.isfinite(rho) else f"undefined (all {rank_by} or all accuracies equal)"
    if n < 5:
        note = "; ".join(filter(None, [note, f"only {n} candidates: a perfect rank agreement happens by chance with probability "
                                                f"1/{n}! = {1 / math.factorial(n):.3g}, so this is anecdotal, not evidence"]))
    return rho, note


def _final_scores(names: Sequence[str], metrics: Mapping, kept, k: int, note: str) -> tuple[dict, dict, object]:
    """Scores of the final features: NC scores from the streamed statistics (exactly the
    ranking's NC1, with its undefined-NC1 rule), the others from the kept features. On
    (nearly) constant features every score is undefined: they carry no information, and any
    number would measure float rounding."""
    out, errors, terms = {}, {}, None
    rest = [n for n in names if n not in metrics]
    if note and "constant" in note:
        return {n: float("nan") for n in names}, {n: note for n in names}, None
    if rest:
        got = _scores.compute_scores(kept[FINAL], kept["labels"], rest, num_classes=k)
        errors.update(got.pop("errors", {}))
        if "ncti" in got:
            # the raw terms, or NaN when they could not be computed (the reason is in errors)
            terms = got["ncti"] if isinstance(got["ncti"], _scores.NCTITerms) else None
            got["ncti"] = float("nan")  # filled in once the whole pool is measured
        out.update(got)
    for n in names:
        if n in metrics:
            out[n] = float(metrics[n])
    return out, errors, terms


STREAMED = ("nc1", "nc2_etf", "cdnv", "logme", "logme_thin")  # computed from the summed statistics, no features kept


def _from_stats(names: Sequence[str], stats, metrics: Mapping) -> tuple[dict, dict]:
    """The streamed scores among ``names``: NC from ``metrics`` (NCStats.compute, with the
    undefined-NC1 rule), LogME from the statistics' F^T F and class sums."""
    out, errors = {}, {}
    for n in names:
        if n in ("nc1", "nc2_etf", "cdnv") and n in metrics:
            out[n] = float(metrics[n])
        elif n in ("logme", "logme_thin"):
            try:
                out[n] = _scores.logme_from_stats(stats, form="thin" if n == "logme_thin" else "evidence")
            except (ValueError, np.linalg.LinAlgError) as exc:
                out[n], errors[n] = float("nan"), str(exc)
    return out, errors


def _block_scores(names: Sequence[str], kept, stats, metrics: Mapping, k: int) -> dict[str, dict[str, float]]:
    blocks = sorted(key for key in stats if isinstance(key, int))
    out: dict[str, dict[str, float]] = {}
    terms = {}
    for b in blocks:
        got, _ = _from_stats(names, stats[b], metrics[str(b)])
        rest = [n for n in names if n not in got]
        if rest:
            more = _scores.compute_scores(kept[b], kept["labels"], rest, num_classes=k)
            more.pop("errors", None)
            got.update(more)
        if "ncti" in got:
            terms[b] = got.pop("ncti")
        out[str(b)] = {n: got[n] for n in names if n in got}
    if terms:  # NCTI per block: the pool is this candidate's blocks
        usable = [b for b, t in terms.items() if isinstance(t, _scores.NCTITerms)]
        for b, v in zip(usable, _scores.ncti_composite([terms[b] for b in usable])):
            out[str(b)]["ncti"] = v
        for b in blocks:
            out[str(b)].setdefault("ncti", float("nan"))
    return out


def _block_truth(accuracies: Mapping, model: nn.Module, layers, name: str) -> dict[str, float]:
    """``{block: accuracy}`` keyed like ``CandidateResult.block_scores`` (non-negative block indices as
    strings; ``-1`` is the last block, as in ``layers``); a block that is not measured is an error, not
    left out of the correlation."""
    from ..features import LayerFeatures

    measured = LayerFeatures(model, layers=layers, include_final=False)  # no hooks: only the blocks it would record
    out = {}
    for b, v in accuracies.items():
        try:
            index = int(b)
        except (TypeError, ValueError):
            raise ValueError(f"block_accuracies[{name!r}]: {b!r} is not a block index") from None
        index = measured.backbone.layer_index(index)
        if index not in measured.layers:
            raise ValueError(f"block_accuracies[{name!r}] has block {b!r}, which is not measured (layers={layers!r} measures "
                             f"blocks {measured.layers}): pass layers='all' or that block")
        if str(index) in out:
            raise ValueError(f"block_accuracies[{name!r}] gives block {index} twice")
        out[str(index)] = float(v)
    return out


def rank_models(
    candidates: Sequence[_measure.Candidate] | Mapping[str, _measure.Candidate],
    dataset,
    *,
    num_classes: int | None = None,
    layers="all",
    linear_probe: bool = False,
    scores: Sequence[str] | None = None,
    rank_by: str | None = None,
    block_scores: Sequence[str] | None = None,
    accuracies: Mapping[str, float] | None = None,
    block_accuracies: Mapping[str, Mapping] | None = None,
    bootstrap: int = 0,
    shots_per_class: int | None = None,
    batch_size: int = 64,
    device=None,
    seed: int = 0,
    C: float = 1.0,
    max_iter: int = 2000,
    degenerate_tol: float = 1e-10,
    progress: bool = True,
) -> RankingResult:
    """Ranks frozen pre-trained models for a downstream task by transferability scores.

    Default rule: ascending NC1 of each candidate's "final" features (what enters its
    classifier; the pooled final-norm output for a bare backbone) on the downstream TRAINING
    split, frozen, without augmentation, each with its own transforms
    (``build_transforms(model)``). The paper finds more collapse there goes with better
    linear probing. With ``scores`` (names of :data:`hf_nc.selection.scores.SCORES`: ``nc1``,
    ``cdnv``, ``ncc_acc``, ``nc2_etf``, ``logme``, ``logme_thin``, ``ncti``, ``hscore``,
    ``hscore_shrinkage``) all of them are computed from the same pass and the candidates are
    ranked by ``rank_by`` (default: the first), best first in that score's direction.
    ``docs/SELECTION.md`` measures every score against fine-tuned and probe accuracy; read it
    before relying on any of them (on small pools the confidence intervals are wide). Candidates whose ranking score is undefined rank last,
    with the reason in ``note``: features (nearly) constant over the data (relative variation
    <= ``degenerate_tol``; every score is then undefined), or coinciding class means.

    Ground truth for ``score_correlations`` (Kendall tau, weighted tau, Spearman, top-1
    regret of every requested score): ``accuracies`` ``{candidate name: accuracy}`` when
    given (e.g. fine-tuned test accuracies), else the linear probes' test accuracy.
    ``block_scores`` adds per-block scores (``CandidateResult.block_scores``) and, with
    ``block_accuracies`` ``{candidate name: {block: accuracy}}``, per-candidate correlations
    over blocks (``block_correlations``).

    Cost per candidate: one forward pass over the training data (all chosen blocks and
    "final" from the same pass; no NCC pass). NC1, NC2, CDNV and LogME are computed from the
    streamed float64 statistics (O(d^2) memory, exact under torch.distributed); the other
    scores keep the final training features (N x d floats; each block's too with
    ``block_scores``);
    ``linear_probe`` costs one more pass over the test split. Models given by name are loaded
    one at a time and released.

    Under torch.distributed (``torchrun``, ``accelerate launch``) every rank streams a
    contiguous shard; statistics are summed exactly and features gathered in order, so
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
        scores: Scores to compute on the final features (default ``["nc1"]``).
        rank_by: The score that orders the candidates (default: ``scores[0]``).
        block_scores: Scores to compute on every chosen block's features.
        accuracies: ``{name: accuracy}`` ground truth for the correlations (overrides probes).
        block_accuracies: ``{name: {block: accuracy}}`` for per-block correlations (needs
            ``block_scores``; every name a candidate, every block measured, ``-1`` the last,
            every accuracy finite: checked before the candidate's forward pass).
        bootstrap: With > 0, ``score_correlations`` also holds 95% percentile-bootstrap intervals
            (``kendall_tau_ci``, ``weighted_tau_ci``, ``spearman_ci``) from that many resamples of
            the candidates (seeded by ``seed``).
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
    for _, cand in named:  # every path before the first candidate's pass
        _measure.check_candidate(cand)
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0 (0: no intervals), got {bootstrap}")
    if accuracies is not None:  # before any model runs
        unknown = sorted(set(accuracies) - set(names))
        if unknown:
            raise ValueError(f"accuracies for unknown candidates {unknown}; candidates: {names}")
        bad = {n: v for n, v in accuracies.items() if not math.isfinite(float(v))}
        if bad:  # a NaN left weighted tau finite and Kendall / Spearman / the regret NaN
            raise ValueError(f"accuracies must be finite, got {bad}: leave out candidates without an accuracy")
    if block_accuracies is not None:  # before any model runs: a typo used to give no block correlations, silently
        if not block_scores:
            raise ValueError("block_accuracies need block_scores (the per-block scores they are correlated with), e.g. "
                             "block_scores=['nc1']")
        unknown = sorted(set(block_accuracies) - set(names))
        if unknown:
            raise ValueError(f"block_accuracies for unknown candidates {unknown}; candidates: {names}")
        bad = {n: {b: v for b, v in acc.items() if not math.isfinite(float(v))} for n, acc in block_accuracies.items()}
        bad = {n: v for n, v in bad.items() if v}
        if bad:
            raise ValueError(f"block_accuracies must be finite, got {bad}: leave out blocks without an accuracy")
    score_names = list(dict.fromkeys(scores)) if scores else ["nc1"]
    rank_by = rank_by or score_names[0]
    if rank_by not in score_names:
        score_names.append(rank_by)
    for n in [*score_names, *(block_scores or [])]:  # rank_by too: before any model is loaded or run
        _scores.get_score(n)
    block_names = list(dict.fromkeys(block_scores or []))
    if block_names and layers == "final":
        raise ValueError("block_scores need blocks: pass layers='all' or block indices")
    train, test, k, description = _measure.resolve_data(dataset, shots_per_class=shots_per_class, seed=seed, need_test=linear_probe,
                                                        num_classes=num_classes)
    block_layers = [] if layers == "final" else layers
    # Streamed scores come from the summed statistics; features are kept only for the others
    # (and for the probe): memory O(d^2) per block instead of O(N d).
    keep_final = linear_probe or any(n not in STREAMED for n in score_names)
    keep_blocks = any(n not in STREAMED for n in block_names)
    results, pool, block_truth = [], [], {}
    for name, cand in tqdm(named, desc="candidates", disable=not (progress and is_main_process())):
        model = _measure.load_candidate(cand, seed=seed)
        if block_accuracies and name in block_accuracies:  # before this candidate's pass
            block_truth[name] = _block_truth(block_accuracies[name], model, block_layers, name)
        _measure.device_of(model, device)
        stats, kept = _measure.measure(model, train, k, layers=block_layers, batch_size=batch_size, keep_final=keep_final,
                                       keep_blocks=keep_blocks, progress=progress)
        computed = {str(key): _measure.compute(s, degenerate_tol) for key, s in stats.items()}
        metrics, note = {key: m for key, (m, _) in computed.items()}, computed[FINAL][1]
        final_metrics, stream_errors = _from_stats(score_names, stats[FINAL], metrics[FINAL])
        values, errors, terms = _final_scores(score_names, final_metrics, kept, k, note)
        if not (note and "constant" in note):
            errors.update(stream_errors)
        if terms is not None:
            values.update(ncti_seli=terms.seli, ncti_ncc=terms.ncc, ncti_vc=terms.vc)
        pool.append(terms)
        per_block = _block_scores(block_names, kept, stats, metrics, k) if block_names else {}
        probe = None
        if linear_probe:
            test_shard = _measure.shard(test)
            xte, yte = penultimate_features(model, test_shard, batch_size=batch_size) if len(test_shard) else (np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
            xte, yte = _measure.gather_rows(xte, yte)
            probe = _measure.fit_probe(kept[FINAL], kept["labels"], xte, yte, C=C, max_iter=max_iter)
        if rank_by != "nc1" and not math.isfinite(values.get(rank_by, math.nan)) and not note and rank_by != "ncti":
            note = f"{rank_by} undefined" + (f": {errors[rank_by]}" if rank_by in errors else "")
        results.append(CandidateResult(name=name, rank=0, nc1=metrics[FINAL]["nc1"], layers=metrics, linear_probe=probe, note=note,
                                       scores=values, block_scores=per_block, score_errors=errors))
        del kept
        if not isinstance(cand, nn.Module):
            del model  # one loaded model at a time
    if "ncti" in score_names:  # the composite needs every candidate's terms
        usable = [i for i, t in enumerate(pool) if isinstance(t, _scores.NCTITerms)]
        for i, v in zip(usable, _scores.ncti_composite([pool[i] for i in usable])):
            results[i].scores["ncti"] = v

    # equal up to float rounding: tied, kept in the order given (rounding decided the order before)
    tied = merge_ties([_scores.oriented(rank_by, r.scores.get(rank_by, math.nan)) for r in results])

    def key(i):
        v = tied[i]
        return (not math.isfinite(v), -v if math.isfinite(v) else 0.0, i)

    ranked = [results[i] for i in sorted(range(len(results)), key=key)]
    for r, c in enumerate(ranked, 1):
        c.rank = r
    if accuracies is not None:
        truth, ground = {n: float(v) for n, v in accuracies.items()}, "provided"
    elif linear_probe:
        truth, ground = {c.name: c.linear_probe["test_accuracy"] for c in ranked}, "linear_probe"
    else:
        truth, ground = {}, ""
    rho, note = _correlation(ranked, truth, rank_by) if ground else (None, "")
    oriented = {c.name: {n: _scores.oriented(n, c.scores.get(n, math.nan)) for n in score_names} for c in ranked}
    correlations = score_correlations(oriented, truth, num_bootstrap=bootstrap, seed=seed) if ground else {}
    block_corr = {}
    for c in ranked:
        acc = block_truth.get(c.name)
        if acc and c.block_scores:
            per = {b: {n: _scores.oriented(n, v) for n, v in s.items()} for b, s in c.block_scores.items()}
            block_corr[c.name] = score_correlations(per, acc)
    settings = dict(layers=layers if isinstance(layers, str) else list(layers), linear_probe=linear_probe, shots_per_class=shots_per_class,
                    batch_size=batch_size, seed=seed, C=C, degenerate_tol=degenerate_tol, scores=score_names, rank_by=rank_by,
                    block_scores=block_names, bootstrap=bootstrap)
    return RankingResult(candidates=ranked, rule=rule_for(rank_by), dataset=description, num_classes=k, num_train=len(train),
                         num_test=len(test) if linear_probe else None, rank_correlation=rho, correlation_note=note, settings=settings,
                         rank_by=rank_by, score_names=score_names, ground_truth=ground, score_correlations=correlations,
                         block_correlations=block_corr)
