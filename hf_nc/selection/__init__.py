"""Choosing what to transfer, by neural collapse on the downstream training data.

- :func:`rank_models`: rank candidate pre-trained models by NC1 of their frozen final
  features (lower = more collapsed = better linear probing, per the paper), optionally with
  linear probes and the rank correlation between the two.
- :func:`suggest_layer` / :func:`choose_block`: the block to tune with SCL FT or Layer FT,
  from the per-block NC1 curve (a documented heuristic; see :mod:`hf_nc.selection.layers`).
- :mod:`hf_nc.selection.scores`: transferability scores of frozen features (LogME, NCTI,
  H-score and its shrinkage variant, the NC family), each with a stated direction.
"""

from .correlation import bootstrap, correlations, score_correlations, top1_regret
from .layers import (METHODS, RULE_NAMES, BlockTrial, LayerSuggestion, choose_block, choose_block_by_score, choose_block_by_trials,
                     few_step_trials, nc1_slopes, suggest_layer, tunable_blocks)
from .scores import SCORES, NCTITerms, ScoreSpec, hscore, hscore_shrinkage, logme, ncti, ncti_composite, ncti_terms
from .ranking import RULE, CandidateResult, RankingResult, rank_models, spearman

__all__ = [
    "METHODS",
    "RULE_NAMES",
    "bootstrap",
    "choose_block_by_score",
    "choose_block_by_trials",
    "few_step_trials",
    "nc1_slopes",
    "BlockTrial",
    "correlations",
    "score_correlations",
    "top1_regret",
    "SCORES",
    "NCTITerms",
    "ScoreSpec",
    "hscore",
    "hscore_shrinkage",
    "logme",
    "ncti",
    "ncti_composite",
    "ncti_terms",
    "RULE",
    "CandidateResult",
    "LayerSuggestion",
    "RankingResult",
    "choose_block",
    "rank_models",
    "spearman",
    "suggest_layer",
    "tunable_blocks",
]
