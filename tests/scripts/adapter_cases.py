"""Shared cases for the adapter tests: one config factory per method, in PEFT's test-suite style."""

from __future__ import annotations

import torch

import hf_nc.adapters as A

# method name -> config factory (fresh config each call: configs record their base model)
METHOD_CONFIGS = {
    "layer_ft": lambda: A.LayerFTConfig(layers=[-1]),
    "layer_ft_attn": lambda: A.LayerFTConfig(layers=[1, -1], part="attention"),
    "scl": lambda: A.SCLConfig(layer=1),
    "head_ft": lambda: A.HeadFTConfig(heads={-1: "all", 1: [0, 2]}),
}
METHODS = list(METHOD_CONFIGS)


def perturb_trainables(model: torch.nn.Module, scale: float = 0.2, seed: int = 123) -> None:
    """Moves every trainable parameter, as a stand-in for training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def first_output(out) -> torch.Tensor:
    return out.logits if getattr(out, "logits", None) is not None else out[0]
