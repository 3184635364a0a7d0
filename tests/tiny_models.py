"""Tiny random models of every supported backbone, for parametrized tests.

Every test that touches models runs over ``TINY_MODELS`` so that a new backbone spec is
covered by adding one entry here.
"""

from __future__ import annotations

import torch
import transformers as tf

HIDDEN, LAYERS, HEADS, IMAGE, PATCH, NUM_LABELS = 32, 4, 4, 16, 8, 3
_SIZES = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, image_size=IMAGE, patch_size=PATCH)
_VISION = dict(_SIZES, intermediate_size=2 * HIDDEN)
_TEXT = dict(hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=HEADS, intermediate_size=2 * HIDDEN, vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def _vit():
    return tf.ViTConfig(**_VISION, num_labels=NUM_LABELS)


def _deit():
    return tf.DeiTConfig(**_VISION, num_labels=NUM_LABELS)


def _dinov2():
    return tf.Dinov2Config(**_SIZES, mlp_ratio=2, num_labels=NUM_LABELS)


def _clip_vision():
    return tf.CLIPVisionConfig(**_VISION, projection_dim=16)


def _clip():
    return tf.CLIPConfig(vision_config=_VISION, text_config=_TEXT, num_labels=NUM_LABELS)


def _siglip_vision():
    return tf.SiglipVisionConfig(**_VISION)


def _siglip():
    return tf.SiglipConfig(vision_config=_VISION, text_config=_TEXT, num_labels=NUM_LABELS)


# name -> (model class, config factory)
TINY_MODELS = {
    "vit": (tf.ViTModel, _vit),
    "vit_cls": (tf.ViTForImageClassification, _vit),
    "deit_cls": (tf.DeiTForImageClassification, _deit),
    "dinov2": (tf.Dinov2Model, _dinov2),
    "dinov2_cls": (tf.Dinov2ForImageClassification, _dinov2),
    "clip_vision": (tf.CLIPVisionModel, _clip_vision),
    "clip_vision_proj": (tf.CLIPVisionModelWithProjection, _clip_vision),
    "clip_cls": (tf.CLIPForImageClassification, _clip),
    "siglip_vision": (tf.SiglipVisionModel, _siglip_vision),
    "siglip_cls": (tf.SiglipForImageClassification, _siglip),
}

CLASSIFIERS = [name for name in TINY_MODELS if name.endswith("_cls")]


def build_tiny_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of the named entry, in eval mode."""
    model_cls, config_fn = TINY_MODELS[name]
    torch.manual_seed(seed)
    return model_cls(config_fn()).eval()


def tiny_pixels(batch: int = 3, seed: int = 1) -> torch.Tensor:
    """Random images ``(B, 3, H, W)`` sized for the tiny models."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=g)
