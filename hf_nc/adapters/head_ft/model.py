"""Tuner of head FT."""

from __future__ import annotations

from ...backbones import Backbone
from .._base import NCTuner
from .config import HeadFTConfig
from .layer import HeadFTLayer


class HeadFTModel(NCTuner):
    """Trains only the chosen heads' slices of the q/k/v/o projections (plus the head).

    Example:
        >>> import hf_nc
        >>> from peft import get_peft_model
        >>> peft_model = get_peft_model(model, hf_nc.HeadFTConfig(heads={-1: "all", -2: [0, 1]}))
    """

    prefix = "hfnc_head_ft_"
    tuner_layer_cls = HeadFTLayer

    def _targets(self, backbone: Backbone, config: HeadFTConfig) -> dict[str, tuple]:
        targets = {}
        seen = {}
        for layer, chosen in config.heads.items():
            index = backbone.layer_index(layer)
            if index in seen:
                raise ValueError(f"HeadFTConfig.heads names block {index} twice (as {seen[index]} and {layer})")
            seen[index] = layer
            n = backbone.num_heads
            if chosen == "all":
                heads = tuple(range(n))
            else:
                bad = [h for h in chosen if not 0 <= h < n]
                if bad:
                    raise ValueError(
                        f"head indices {bad} of block {layer} are out of range: this {backbone.spec.name} model has "
                        f"{n} heads per block (0..{n - 1})"
                    )
                heads = tuple(sorted(set(chosen)))
            for proj, path in backbone.projection_paths(index).items():
                if proj in config.projections:
                    targets[path] = ("cols" if proj == "o" else "rows", heads, backbone.head_dim)
        return targets

    def _create_or_update(self, config, adapter_name, target, role):
        kind, heads, head_dim = role
        if isinstance(target, HeadFTLayer):
            target.update_layer(adapter_name, heads, config.train_bias, inference_mode=config.inference_mode)
            return None
        return HeadFTLayer(target, adapter_name, kind, heads, head_dim, config.train_bias, inference_mode=config.inference_mode)
