"""Tuner of SCL FT."""

from __future__ import annotations

import torch
from torch import nn

from ...backbones import Backbone, resolve_backbone
from .._base import NCTuner, first_tensor, replace_first
from .config import SCLConfig
from .layer import SCLLayer, SCLSinkLayer, SCLSourceLayer


class SCLModel(NCTuner):
    """Tunes one block and adds a skip connection from it to the classifier input (see
    :class:`SCLConfig` for the wiring and its reasons).

    Example:
        >>> import hf_nc
        >>> from peft import get_peft_model
        >>> peft_model = get_peft_model(model, hf_nc.SCLConfig(layer=-3))
    """

    prefix = "hfnc_scl_"
    tuner_layer_cls = SCLLayer
    copy_containers = ("hfnc_scl_block",)

    def _targets(self, backbone: Backbone, config: SCLConfig) -> dict[str, tuple]:
        layer = backbone.layer_index(config.layer)
        last = backbone.num_layers - 1
        if layer == last:
            raise ValueError(
                f"SCLConfig(layer={config.layer}) is the last block of this {backbone.num_layers}-block model: the skip "
                f"needs frozen blocks after the tuned one (valid: 0..{last - 1}, or -{backbone.num_layers}..-2). To tune "
                "only the last block, use LayerFTConfig(layers=[-1])."
            )
        options = {
            "combine": config.combine,
            "skip_source": config.skip_source,
            "pooling": backbone.spec.pooling,
            "num_prefix_tokens": backbone.spec.num_prefix_tokens,
        }
        sink = backbone.block_path(last) if config.position == "pre_norm" else backbone.final_norm_path
        return {backbone.block_path(layer): ("source", options), sink: ("sink", options)}

    @property
    def _cache(self) -> dict:
        if "_nc_skip_cache" not in self.__dict__:
            self.__dict__["_nc_skip_cache"] = {}
        return self.__dict__["_nc_skip_cache"]

    def _create_or_update(self, config, adapter_name, target, role):
        kind, options = role
        backbone_width = resolve_backbone(self.model).hidden_size
        if kind == "source":
            if isinstance(target, SCLSourceLayer):
                target._nc_skip_source[adapter_name] = options["skip_source"]
                target.update_layer(adapter_name, inference_mode=config.inference_mode)
                return None
            if isinstance(target, SCLLayer):
                raise ValueError("an SCL adapter's source block is another SCL adapter's sink; use separate models")
            return SCLSourceLayer(target, adapter_name, self._cache, options["skip_source"], config.inference_mode)
        if isinstance(target, SCLSinkLayer):
            target.update_layer(adapter_name, options, inference_mode=config.inference_mode)
            return None
        if isinstance(target, SCLLayer):
            raise ValueError("an SCL adapter's sink is another SCL adapter's source block; use separate models")
        return SCLSinkLayer(target, adapter_name, self._cache, backbone_width, options, config.inference_mode)

    def _check_merge_allowed(self):
        raise ValueError(
            "SCL FT adds a skip connection the base architecture does not have, so merge_and_unload()/merge_adapter() "
            "cannot express it in the base model. Keep the PeftModel, or use unload()/disable_adapter() for the base."
        )

    def _post_injection_hook(self, model: nn.Module, config: SCLConfig, adapter_name: str) -> None:
        super()._post_injection_hook(model, config, adapter_name)
        if config.position == "post_norm":
            _check_post_norm_reaches_output(model, adapter_name)


def _check_post_norm_reaches_output(model: nn.Module, adapter_name: str) -> None:
    """Autograd probe: does the final norm's output reach the classifier (or, for bare backbones,
    any output)? Raises ``ValueError`` if not, instead of silently training a dead skip."""
    backbone = resolve_backbone(model)
    sink = next((m for m in model.modules() if isinstance(m, SCLSinkLayer) and adapter_name in m._nc_options), None)
    param = next(model.parameters(), None)
    cfg = backbone.config
    size, channels = getattr(cfg, "image_size", None), getattr(cfg, "num_channels", 3)
    if sink is None or param is None or param.device.type == "meta" or not isinstance(size, int):
        return
    captured = {}

    def hook(module, args, output):
        y = first_tensor(output).detach().requires_grad_(True)
        captured["y"] = y
        return replace_first(output, y)

    handle = sink.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = torch.zeros(1, channels, size, size, dtype=param.dtype, device=param.device)
            outputs = model(pixel_values=x)
            if backbone.classifier is not None and getattr(outputs, "logits", None) is not None:
                tensors = [outputs.logits]
            else:
                tensors = [v for v in outputs.values() if isinstance(v, torch.Tensor) and v.dtype.is_floating_point]
            total = sum(t.float().sum() for t in tensors)
            grad = torch.autograd.grad(total, captured["y"], allow_unused=True)[0]
    finally:
        handle.remove()
        model.train(was_training)
        sink._nc_cache.clear()
    if grad is None:
        raise ValueError(
            f"SCLConfig(position='post_norm'): the output of {backbone.final_norm_path} does not reach the "
            f"{'classifier' if backbone.classifier is not None else 'model outputs'} of this "
            f"{type(backbone.model).__name__}, so a post-norm skip would be dead. Use position='pre_norm'."
        )
