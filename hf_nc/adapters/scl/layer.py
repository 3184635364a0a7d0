"""Tuner layers of SCL FT: the tuned source block and the skip's sink."""

from __future__ import annotations

from typing import Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ...backbones import pool_tokens
from .._base import NCCopyLayer, first_tensor, replace_first


class SCLLayer:
    """Marker base of the SCL tuner layers (``SCLModel.tuner_layer_cls``)."""


class SCLSourceLayer(NCCopyLayer, SCLLayer):
    """Block ``l``: runs its trainable copy and hands the output (and, for the delta source, the
    frozen block's output) to the sink through a cache shared with it."""

    copy_attr = "hfnc_scl_block"
    adapter_layer_names = ("hfnc_scl_block",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, cache: dict, skip_source: str,
                 inference_mode: bool = False):
        super().__init__(base_layer, adapter_name, inference_mode=inference_mode)
        self._nc_skip_source: dict[str, str] = {}
        self._nc_cache = cache
        self._nc_skip_source[adapter_name] = skip_source

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        raise ValueError(
            "SCL FT adds a skip connection the base architecture does not have, so it cannot be merged into the base "
            "weights. Keep the PeftModel (it runs as fast as the base plus one addition), or use unload() / "
            "disable_adapter() for the base model."
        )

    def forward(self, *args, **kwargs):
        name = self._single_active()
        if name is None:
            return self.base_layer(*args, **kwargs)
        out = self.copies[name](*args, **kwargs)
        ref = None
        if self._nc_skip_source[name] == "delta":
            with torch.no_grad():
                ref = first_tensor(self.base_layer(*args, **kwargs))
        self._nc_cache[name] = (first_tensor(out), ref)
        return out

    def __repr__(self) -> str:
        return "hfnc_scl_source." + super().__repr__()


class SCLSinkLayer(nn.Module, BaseTunerLayer, SCLLayer):
    """The last block (``pre_norm``) or the final norm (``post_norm``): adds the skip to its output."""

    adapter_layer_names = ("hfnc_scl_scale", "hfnc_scl_proj")
    other_param_names = ("_nc_options",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, cache: dict, hidden_size: int, options: dict,
                 inference_mode: bool = False):
        super().__init__()
        self.base_layer = base_layer
        self.hfnc_scl_scale = nn.ParameterDict({})
        self.hfnc_scl_proj = nn.ModuleDict({})
        self._nc_options: dict[str, dict] = {}
        self._nc_cache = cache
        self.hidden_size = hidden_size
        self._active_adapter = adapter_name
        self.merged_adapters = []
        self.update_layer(adapter_name, options, inference_mode=inference_mode)

    def update_layer(self, adapter_name: str, options: dict, inference_mode: bool = False) -> None:
        d = self.hidden_size
        ref = next(self.base_layer.parameters(), None)
        kw = {"dtype": ref.dtype, "device": ref.device} if ref is not None else {}
        delta = options["skip_source"] == "delta"
        if options["combine"] == "add":
            self.hfnc_scl_scale[adapter_name] = nn.Parameter(torch.full((d,), 1.0 if delta else 0.0, **kw))
        else:
            proj = nn.Linear(2 * d, d, **kw)
            with torch.no_grad():
                eye = torch.eye(d, **kw)
                proj.weight.copy_(torch.cat([eye, eye if delta else torch.zeros_like(eye)], dim=1))
                proj.bias.zero_()
            self.hfnc_scl_proj[adapter_name] = proj
        self._nc_options[adapter_name] = dict(options)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        raise ValueError("SCL FT cannot be merged into the base weights (it adds a skip connection); see SCLConfig.")

    def unmerge(self) -> None:
        return None

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        if self.disable_adapters:
            return out
        active = [a for a in self.active_adapters if a in self._nc_options]
        if not active:
            return out
        if len(active) > 1:
            raise ValueError(f"SCL runs one adapter at a time, got active adapters {active}")
        name = active[0]
        entry = self._nc_cache.pop(name, None)
        if entry is None:
            raise RuntimeError(
                f"SCL adapter {name!r}: the skip's source block did not run before its sink in this forward pass. "
                "SCL needs the backbone's full forward (source block, later blocks, then the sink)."
            )
        tuned, ref = entry
        skip = tuned - ref if ref is not None else tuned
        y = first_tensor(out)
        opts = self._nc_options[name]
        if skip.dim() == 3 and y.dim() == 2:  # the sink sees pooled features (e.g. CLIP's post-norm)
            skip = pool_tokens(skip, opts["pooling"], opts["num_prefix_tokens"])
        skip = skip.to(y.dtype)
        if opts["combine"] == "add":
            y = y + self.hfnc_scl_scale[name].to(y.dtype) * skip
        else:
            y = self.hfnc_scl_proj[name](torch.cat([y, skip], dim=-1))
        return replace_first(out, y)

    def __repr__(self) -> str:
        return "hfnc_scl_sink." + super().__repr__()
