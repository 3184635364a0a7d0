"""The specs of the supported families: the only place that knows their module names.

To support another family, add a :class:`BackboneSpec` here (or call
:func:`hf_nc.backbones.register_backbone` from your own code) and add a tiny config of it
to the parametrized model list in ``tests/models.py``.
"""

from __future__ import annotations

from .spec import BackboneSpec

_PRE_NORM_PARTS = {"attention": ("layer_norm1", "self_attn"), "mlp": ("layer_norm2", "mlp")}

VIT = BackboneSpec(
    name="vit",
    model_types=("vit",),
    tower_paths=("vit", ""),
    blocks="layers",
    final_norm="layernorm",
    attention="attention",
    qkvo=("q_proj", "k_proj", "v_proj", "o_proj"),
    parts={"attention": ("layernorm_before", "attention"), "mlp": ("layernorm_after", "mlp")},
)

# DeiT prepends a distillation token after CLS: two prefix tokens.
DEIT = BackboneSpec(
    name="deit",
    model_types=("deit",),
    tower_paths=("deit", ""),
    blocks="layers",
    final_norm="layernorm",
    attention="attention",
    qkvo=("q_proj", "k_proj", "v_proj", "o_proj"),
    parts={"attention": ("layernorm_before", "attention"), "mlp": ("layernorm_after", "mlp")},
    num_prefix_tokens=2,
)

DINOV2 = BackboneSpec(
    name="dinov2",
    model_types=("dinov2",),
    tower_paths=("dinov2", ""),
    blocks="encoder.layer",
    final_norm="layernorm",
    attention="attention",
    qkvo=("q_proj", "k_proj", "v_proj", "o_proj"),
    parts={"attention": ("norm1", "attention", "layer_scale1"), "mlp": ("norm2", "mlp", "layer_scale2")},
)

CLIP_VISION = BackboneSpec(
    name="clip_vision",
    model_types=("clip_vision_model", "clip"),
    tower_paths=("vision_model", ""),
    blocks="encoder.layers",
    final_norm="post_layernorm",
    attention="self_attn",
    qkvo=("q_proj", "k_proj", "v_proj", "out_proj"),
    parts=_PRE_NORM_PARTS,
    vision_config=lambda c: getattr(c, "vision_config", c),
)

# SigLIP has no CLS token: its blocks are pooled by the mean of all tokens.
SIGLIP_VISION = BackboneSpec(
    name="siglip_vision",
    model_types=("siglip_vision_model", "siglip"),
    tower_paths=("vision_model", ""),
    blocks="encoder.layers",
    final_norm="post_layernorm",
    attention="self_attn",
    qkvo=("q_proj", "k_proj", "v_proj", "out_proj"),
    parts=_PRE_NORM_PARTS,
    pooling="mean",
    num_prefix_tokens=0,
    vision_config=lambda c: getattr(c, "vision_config", c),
)

BUILTIN_SPECS = (VIT, DEIT, DINOV2, CLIP_VISION, SIGLIP_VISION)
