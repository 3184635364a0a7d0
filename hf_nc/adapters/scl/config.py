"""Configuration of SCL FT: one tuned block with a skip connection to the classifier."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from .._base import NCAdapterConfig, as_index

PEFT_TYPE = "HFNC_SCL"


@dataclass
class SCLConfig(NCAdapterConfig):
    """Skip-Connection-Layer fine-tuning (SCL FT, Li et al., TMLR 2024).

    Block ``layer`` is fine-tuned (a trainable copy, as in Layer FT) and its output tokens reach
    the classifier input through a skip connection, so the tuned features feed the classifier
    directly while the frozen blocks after it still run and still contribute. Trained: block
    ``layer``, the skip's parameters, and the classification head.

    **Default wiring and why.** With ``h_l`` the tuned block's output tokens, ``h̄_l`` the frozen
    block's output on the same input and ``h_L`` the last block's output tokens::

        h_L  <-  h_L + alpha * (h_l - h̄_l)          (combine="add", position="pre_norm",
                                                     skip_source="delta"; alpha in R^d, init 1)

    * *Before the final norm, on the tokens* (``position="pre_norm"``): the sum flows through the
      model's own final norm and every family's own pooling (ViT/DeiT CLS, DINOv2 CLS+patch-mean
      concat, CLIP CLS or patch mean, SigLIP mean/MAP head) without the adapter knowing about it,
      and the classifier keeps its input width; this is also what DESIGN.md suggests.
    * *Delta source* (``skip_source="delta"``): the skip is exactly zero at initialisation, so the
      adapted model equals the base model bit for bit, and yet its derivative with respect to
      block ``l`` is ``alpha = 1``: the skip carries gradient to block ``l`` from the first step.
      A gate on the features themselves (``alpha * h_l`` with ``alpha = 0``) can have only one of
      those two properties (zero output for all inputs forces a zero Jacobian), and a zero gate on
      a zero-initialised projection would receive no gradient at all. The price is one extra
      frozen forward of block ``l`` under ``no_grad`` (no activations kept), and the mirror image
      of the gate: ``alpha`` multiplies a zero skip at init, so it is reached from step two.
    * ``skip_source="features"`` adds ``alpha * h_l`` with ``alpha`` initialised to 0 (a
      ReZero/Flamingo-style gate): equal to the base at init, no extra forward; the skip's
      gradient reaches ``alpha`` at step one and block ``l`` from step two (block ``l`` gets
      gradient from step one through the frozen blocks after it either way).
    * ``combine="concat"`` feeds ``[h_L ; skip]`` (width 2d) through a trainable projection back
      to d (initialised ``[I | I]`` for delta, ``[I | 0]`` for features, so the base is reproduced
      at init) - the classifier input width stays d, so the adapter stays PEFT-compatible.
    * ``position="post_norm"`` adds the skip to the final norm's output instead (pooled by the
      family's pooling when the final norm sees pooled features, as in CLIP). Models whose
      classifier does not read the final norm (``CLIPForImageClassification`` reads the
      un-normalised tokens) are rejected with a clear error, found by an autograd probe.

    **Evidence for the default** (``docs/RESULTS.md``, "SCL's default variant"): the transfer
    study compares the variants (``concat``, ``features``, ``post_norm`` and the un-gated
    ``h_L + h_l``) with this default on validation data at each cell's chosen block. On DINOv2-S
    (digits, 10 shots) the default is best and on the tiny ViT best in one of three cells; no
    variant beats it on average by more than the study's 0.5-point margin, so it stays the
    default. Validation over two selection seeds: a ranking, not a significance test.

    SCL adds a connection the base architecture does not have, so ``merge_and_unload`` raises;
    ``disable_adapter()`` runs the base model; ``unload()`` returns the base blocks (with the
    trained head, PEFT's ``modules_to_save`` semantics).

    Args:
        layer: The tuned block; negative counts from the end. Must be below the last block
            (for the last block alone use ``LayerFTConfig(layers=[-1])``).
        combine: ``"add"`` (default) or ``"concat"``.
        position: ``"pre_norm"`` (default) or ``"post_norm"``.
        skip_source: ``"delta"`` (default) or ``"features"``.
    """

    PEFT_TYPE = PEFT_TYPE

    layer: Optional[int] = field(default=None, metadata={"help": "The tuned block (negative from the end)."})
    combine: Literal["add", "concat"] = field(default="add", metadata={"help": "'add' or 'concat'."})
    position: Literal["pre_norm", "post_norm"] = field(default="pre_norm", metadata={"help": "'pre_norm' or 'post_norm'."})
    skip_source: Literal["delta", "features"] = field(default="delta", metadata={"help": "'delta' or 'features'."})

    def __post_init__(self):
        super().__post_init__()
        if self.layer is None:
            raise ValueError("SCLConfig needs layer=<block index> (negative counts from the end)")
        self.layer = as_index(self.layer, "SCLConfig.layer")
        for name, allowed in (("combine", ("add", "concat")), ("position", ("pre_norm", "post_norm")),
                              ("skip_source", ("delta", "features"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"SCLConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
