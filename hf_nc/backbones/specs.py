"""The specs of the supported families: the only place that knows their module names.

To support another family, add a :class:`BackboneSpec` here (or call
:func:`hf_nc.backbones.register_backbone` from your own code) and add a tiny config of it
to the parametrized model list in ``tests/tiny_models.py``.
"""

from __future__ import annotations

from dataclasses import replace

from .spec import BackboneSpec


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

# DeiT: ViT's layout under another prefix, with a distillation token after CLS.
DEIT = replace(VIT, name="deit", model_types=("deit",), tower_paths=("deit", ""), num_prefix_tokens=2)

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
    parts={"attention": ("layer_norm1", "self_attn"), "mlp": ("layer_norm2", "mlp")},
    vision_config=lambda c: getattr(c, "vision_config", c),
    pre_blocks=("pre_layrnorm",),
)

# SigLIP: CLIP's layout; no CLS token, so blocks are pooled by the mean of all tokens.
SIGLIP_VISION = replace(
    CLIP_VISION, name="siglip_vision", model_types=("siglip_vision_model", "siglip"), pooling="mean", num_prefix_tokens=0,
    pre_blocks=(),
)

BUILTIN_SPECS = (VIT, DEIT, DINOV2, CLIP_VISION, SIGLIP_VISION)
