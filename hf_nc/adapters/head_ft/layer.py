"""Tuner layer of head FT: per-head delta slices on one attention projection."""

from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn


class HeadFTLayer(nn.Module, BaseTunerLayer):
    """Wraps an ``nn.Linear`` q/k/v projection (role ``"rows"``) or o projection (``"cols"``).

    Per adapter it stores only the chosen heads' deltas:

    * rows (q/k/v): ``delta`` of shape ``(n, head_dim, in_features)`` added to output rows
      ``h*head_dim:(h+1)*head_dim`` of each chosen head ``h``, and ``bias`` ``(n, head_dim)``;
    * cols (o): ``delta`` of shape ``(n, out_features, head_dim)`` added to the input columns of
      each chosen head.
    """

    adapter_layer_names = ("hfnc_head_ft_delta", "hfnc_head_ft_bias")
    other_param_names = ("hfnc_head_ft_heads",)

    def __init__(self, base_layer: nn.Linear, adapter_name: str, role: str, heads, head_dim: int, train_bias: bool,
                 inference_mode: bool = False):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"head FT adapts nn.Linear projections, got {type(base_layer).__name__}")
        if role not in ("rows", "cols"):
            raise ValueError(f"role must be 'rows' or 'cols', got {role!r}")
        self.base_layer = base_layer
        self.role = role
        self.head_dim = head_dim
        self.hfnc_head_ft_delta = nn.ParameterDict({})
        self.hfnc_head_ft_bias = nn.ParameterDict({})
        self.hfnc_head_ft_heads: dict[str, tuple[int, ...]] = {}
        self._index_cache: dict = {}
        self._active_adapter = adapter_name
        self.merged_adapters = []
        self.update_layer(adapter_name, heads, train_bias, inference_mode=inference_mode)

    def update_layer(self, adapter_name: str, heads, train_bias: bool, inference_mode: bool = False) -> None:
        base = self.base_layer
        heads = tuple(heads)
        n, hd = len(heads), self.head_dim
        shape = (n, hd, base.in_features) if self.role == "rows" else (n, base.out_features, hd)
        weight = base.weight
        self.hfnc_head_ft_delta[adapter_name] = nn.Parameter(torch.zeros(shape, dtype=weight.dtype, device=weight.device))
        if self.role == "rows" and train_bias and base.bias is not None:
            self.hfnc_head_ft_bias[adapter_name] = nn.Parameter(torch.zeros(n, hd, dtype=weight.dtype, device=weight.device))
        self.hfnc_head_ft_heads[adapter_name] = heads
        self._index_cache.pop(adapter_name, None)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def _index(self, adapter_name: str, device) -> torch.Tensor:
        key = (adapter_name, device)
        if key not in self._index_cache:
            hd = self.head_dim
            idx = [h * hd + j for h in self.hfnc_head_ft_heads[adapter_name] for j in range(hd)]
            self._index_cache[key] = torch.tensor(idx, dtype=torch.long, device=device)
        return self._index_cache[key]

    def _dense_update(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """``(index, delta matrix, bias delta)``: rows -> (n*hd, in), cols -> (out, n*hd)."""
        delta = self.hfnc_head_ft_delta[adapter_name]
        index = self._index(adapter_name, delta.device)
        if self.role == "rows":
            bias = self.hfnc_head_ft_bias[adapter_name].reshape(-1) if adapter_name in self.hfnc_head_ft_bias else None
            return index, delta.reshape(-1, delta.shape[-1]), bias
        return index, delta.permute(1, 0, 2).reshape(delta.shape[1], -1), None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
                result = self.base_layer(x, *args, **kwargs)
            return result
        if self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.hfnc_head_ft_delta:
                continue
            index, matrix, bias = self._dense_update(name)
            xa = x.to(matrix.dtype)
            if self.role == "rows":
                result = result.index_add(-1, index, F.linear(xa, matrix, bias).to(result.dtype))
            else:
                result = result + F.linear(xa.index_select(-1, index), matrix).to(result.dtype)
        return result

    @torch.no_grad()
    def _add_delta(self, adapter_name: str, sign: float) -> None:
        index, matrix, bias = self._dense_update(adapter_name)
        weight = self.base_layer.weight
        if self.role == "rows":
            weight.index_add_(0, index, (sign * matrix).to(weight.dtype))
            if bias is not None:
                self.base_layer.bias.index_add_(0, index, (sign * bias).to(weight.dtype))
        else:
            weight.index_add_(1, index, (sign * matrix).to(weight.dtype))

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        for name in adapter_names:
            if name not in self.hfnc_head_ft_delta:
                continue
            if safe_merge:
                tensors = [self.hfnc_head_ft_delta[name]] + ([self.hfnc_head_ft_bias[name]] if name in self.hfnc_head_ft_bias else [])
                if not all(torch.isfinite(t).all() for t in tensors):
                    raise ValueError(f"NaNs or infs in adapter {name!r}: refusing to merge")
            self._add_delta(name, 1.0)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        while self.merged_adapters:
            self._add_delta(self.merged_adapters.pop(), -1.0)

    def __repr__(self) -> str:
        return "hfnc_head_ft." + super().__repr__()
