"""Choosing what to transfer, by neural collapse on the downstream training data.

- :func:`rank_models`: rank candidate pre-trained models by NC1 of their frozen final
  features (lower = more collapsed = better linear probing, per the paper), optionally with
  linear probes and the rank correlation between the two.
- :func:`suggest_layer` / :func:`choose_block`: the block to tune with SCL FT or Layer FT,
  from the per-block NC1 curve (a documented heuristic; see :mod:`hf_nc.selection.layers`).
"""

from .layers import METHODS, LayerSuggestion, choose_block, suggest_layer
from .ranking import RULE, CandidateResult, RankingResult, rank_models, spearman

__all__ = [
    "METHODS",
    "RULE",
    "CandidateResult",
    "LayerSuggestion",
    "RankingResult",
    "choose_block",
    "rank_models",
    "spearman",
    "suggest_layer",
]
