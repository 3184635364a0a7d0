"""Tuner of Layer FT."""

from __future__ import annotations

from ...backbones import Backbone
from .._base import NCTuner, resolve_layers
from .config import LayerFTConfig
from .layer import LayerFTLayer


class LayerFTModel(NCTuner):
    """Fine-tunes whole blocks (or their attention / MLP parts) chosen by index.

    Example:
        >>> import hf_nc
        >>> from peft import get_peft_model
        >>> peft_model = get_peft_model(model, hf_nc.LayerFTConfig(layers=[-1]))
        >>> peft_model.print_trainable_parameters()
    """

    prefix = "hfnc_layer_ft_"
    tuner_layer_cls = LayerFTLayer
    copy_containers = ("hfnc_layer_ft_copy",)

    def _targets(self, backbone: Backbone, config: LayerFTConfig) -> dict[str, str]:
        targets = {}
        for i in resolve_layers(backbone, config.layers, "LayerFTConfig.layers"):
            paths = [backbone.block_path(i)] if config.part == "block" else backbone.part_paths(i, config.part)
            targets.update(dict.fromkeys(paths, "copy"))
        return targets

    def _create_or_update(self, config, adapter_name, target, role):
        if isinstance(target, LayerFTLayer):
            target.update_layer(adapter_name, inference_mode=config.inference_mode)
            return None
        return LayerFTLayer(target, adapter_name, inference_mode=config.inference_mode)
