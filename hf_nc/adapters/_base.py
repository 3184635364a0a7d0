"""Machinery shared by the hf-nc PEFT methods (layer FT, SCL FT, head FT).

Every method is a regular PEFT tuner (``BaseTuner`` + ``BaseTunerLayer``), modelled on PEFT's
own ``ln_tuning`` (module copies) and ``ia3`` (per-adapter parameter dicts). What they share:

* **Targets from the backbone spec.** Users name blocks and heads by index; the module paths
  come from :func:`hf_nc.backbones.resolve_backbone`, never from architecture branches here.
* **A base-model fingerprint in the config** (model type, backbone family, number of blocks,
  width, heads), recorded when the adapter is first applied and checked whenever it is applied
  again (e.g. by ``PeftModel.from_pretrained``): loading into another base fails loudly.
* **Complete loads only.** ``set_peft_model_state_dict`` loads with ``strict=False``; our tuners
  check that the checkpoint holds exactly the adapter's tensors (none missing, none unknown).
* **Flat checkpoint keys.** Module copies live in ``ModuleDict``s keyed by adapter name; PEFT's
  default key cleaning leaves that name nested in the middle of such keys
  (``...copy.default.attention...``), which is what makes transformers' own adapter loading
  mis-load copy-style adapters. We strip it, so saved keys never contain the adapter name.
* **A frozen-prefix cut.** Everything below the first tuned block is frozen, so no autograd
  graph is built there; a forward pre-hook on the first tuned block additionally detaches its
  input, so even an input that requires grad (``enable_input_require_grads``, gradient
  checkpointing) cannot make the frozen prefix keep activations for backward. Under reentrant
  activation checkpointing the cut input is a leaf that requires grad, so the checkpointed tuned
  blocks still get gradients.
"""

from __future__ import annotations

import copy
import numbers
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np
import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import (
    BaseTuner,
    BaseTunerLayer,
    _filter_state_dict_by_key_prefixes,
    _get_tuner_state_dict_key_prefixes,
    check_adapters_to_merge,
)
from peft.utils.other import ModulesToSaveWrapper
from torch import nn

from ..backbones import Backbone, resolve_backbone
from ..checkpoints import builtin_name, resolve_builtin
from ._weights_files import PEFT_PREFIX, _partial_load_error, check_adapter_weights_file


class NCPeftType(str):
    """A ``peft_type`` outside PEFT's closed ``PeftType`` enum.

    A plain ``str`` (so it hashes/compares like the enum members and serialises to JSON as a
    string) that also answers ``.value`` and ``.name`` like an enum member, because some PEFT
    error paths format ``config.peft_type.value``.
    """

    @property
    def value(self) -> str:
        return str(self)

    @property
    def name(self) -> str:
        return str(self)


@dataclass
class NCAdapterConfig(PeftConfig):
    """Fields shared by the hf-nc adapter configs.

    Args:
        train_head: Train (and save) the model's classification head, found through the backbone
            spec, like PEFT's ``modules_to_save``. Bare backbones without a head ignore it.
        modules_to_save: Further modules to train and save (PEFT semantics).
        target_modules: Filled in when the config is applied: the dotted paths of the adapted
            modules, derived from the backbone spec. Informative only; recomputed on every load.
        base_model_type, base_backbone, base_num_layers, base_hidden_size, base_num_heads:
            Fingerprint of the base model, recorded when the adapter is first applied and checked
            whenever it is applied again. Leave them ``None``.
        base_model_class: The transformers class the adapter was made on (e.g.
            ``"ViTForImageClassification"``), recorded when first applied; the class
            ``hf_nc.AutoPeftModelForImageClassification`` builds the base with. Leave it ``None``.
        id2label: The task's class names (the model's ``config.id2label`` when the adapter is first
            applied to a model with a classification head), so a loader can size the base's head
            and name its outputs. Leave it ``None``.
    """

    PEFT_TYPE: ClassVar[str] = ""

    train_head: bool = field(default=True, metadata={"help": "Train and save the classification head."})
    modules_to_save: Optional[list[str]] = field(default=None, metadata={"help": "Extra modules to train and save."})
    target_modules: Optional[list[str]] = field(default=None, metadata={"help": "Filled in when applied."})
    base_model_type: Optional[str] = field(default=None, metadata={"help": "Recorded base fingerprint."})
    base_backbone: Optional[str] = field(default=None, metadata={"help": "Recorded base fingerprint."})
    base_num_layers: Optional[int] = field(default=None, metadata={"help": "Recorded base fingerprint."})
    base_hidden_size: Optional[int] = field(default=None, metadata={"help": "Recorded base fingerprint."})
    base_num_heads: Optional[int] = field(default=None, metadata={"help": "Recorded base fingerprint."})
    base_model_class: Optional[str] = field(default=None, metadata={"help": "Recorded base model class."})
    id2label: Optional[dict[str, str]] = field(default=None, metadata={"help": "Recorded class names of the task."})
    base_weights_sample: Optional[dict] = field(default=None, metadata={"help": (
        "Recorded: the first values of the base's first non-zero parameter, to warn when the adapter is applied to a base of "
        "the same shape but other weights.")})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = NCPeftType(self.PEFT_TYPE)
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)
        if self.id2label is not None:  # JSON keys are strings; keep one form in memory and on disk
            self.id2label = {str(as_index(k, "id2label keys", allow_str=True)): str(v) for k, v in self.id2label.items()}
        # A built-in checkpoint is its local folder in memory (so that PEFT's checks at save time find
        # its config.json locally instead of asking the Hub) and its stable name on disk (see to_dict):
        # the folder differs from one install to the next.
        if builtin_name(self.base_model_name_or_path) is not None:
            self.base_model_name_or_path = resolve_builtin(builtin_name(self.base_model_name_or_path))

    def to_dict(self) -> dict:
        """PEFT's ``to_dict`` (what ``save_pretrained`` writes), with a built-in base recorded by its
        stable name (e.g. ``"hf-nc/tiny-vit-fmnist"``) instead of this install's folder."""
        out = super().to_dict()
        out["base_model_name_or_path"] = builtin_name(out.get("base_model_name_or_path")) or out.get(
            "base_model_name_or_path")
        return out

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs):
        """PEFT's ``from_pretrained``, remembering where the config came from.

        ``PeftModel.from_pretrained`` / ``load_adapter`` load the config through this method, then
        inject the adapter, then load its weights. The tuner uses the remembered source to check
        the weights file right after injection, before PEFT reads it (see
        :meth:`NCTuner.inject_adapter`): PEFT would otherwise fail with a bare ``KeyError`` on a
        file that lacks the head's tensors, and with an error that names no file on a truncated one.
        """
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only", "repo_type")
                      if kwargs.get(k) is not None}
        config._nc_weights_source = (str(pretrained_model_name_or_path), subfolder, hub_kwargs)
        return config

    # -- fingerprint -------------------------------------------------------------------------
    _FINGERPRINT = ("base_model_type", "base_backbone", "base_num_layers", "base_hidden_size", "base_num_heads")

    @staticmethod
    def fingerprint_of(backbone: Backbone) -> dict[str, Any]:
        return {
            "base_model_type": getattr(backbone.model.config, "model_type", None),
            "base_backbone": backbone.spec.name,
            "base_num_layers": backbone.num_layers,
            "base_hidden_size": backbone.hidden_size,
            "base_num_heads": backbone.num_heads,
        }

    def check_or_record_base(self, backbone: Backbone) -> None:
        """Records the base fingerprint, or raises ``ValueError`` if it names another base; warns when the
        base has the recorded shape but other weights (see :func:`weights_sample`)."""
        actual = self.fingerprint_of(backbone)
        recorded = {k: getattr(self, k) for k in self._FINGERPRINT}
        if all(v is None for v in recorded.values()):
            for k, v in actual.items():
                setattr(self, k, v)
            self.base_weights_sample = weights_sample(backbone.model)
            return
        diff = {k: (recorded[k], actual[k]) for k in self._FINGERPRINT if recorded[k] is not None and recorded[k] != actual[k]}
        if diff:
            details = "; ".join(f"{k.removeprefix('base_')}: adapter {a!r} vs model {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"This {type(self).__name__} adapter was made for another base model ({details}). Load it into "
                f"the base it was trained on (a {recorded['base_backbone']} model of type "
                f"{recorded['base_model_type']!r} with {recorded['base_num_layers']} blocks, width "
                f"{recorded['base_hidden_size']}, {recorded['base_num_heads']} heads). To apply these settings to "
                "a new base, build a fresh config (the fingerprint fields must be None)."
            )
        problem = weights_sample_mismatch(self.base_weights_sample, weights_sample(backbone.model))
        if problem:
            warnings.warn(
                f"This {type(self).__name__} adapter was trained on a base with other weights ({problem}): the shapes "
                f"match, so it loads, but its outputs are not the trained adapter's. Load it into its own base"
                + (f" ({self.base_model_name_or_path!r})" if self.base_model_name_or_path else "")
                + " unless this base is the one you mean.", UserWarning, stacklevel=2)


#: values recorded by :func:`weights_sample`; compared within :data:`WEIGHTS_SAMPLE_RTOL` (bf16 rounds at 2**-8)
WEIGHTS_SAMPLE_SIZE = 8
WEIGHTS_SAMPLE_RTOL = 1e-2


def weights_sample(model: nn.Module) -> Optional[dict]:
    """``{"parameter": name, "values": [...]}``: the first :data:`WEIGHTS_SAMPLE_SIZE` values of ``model``'s first
    parameter that is not all zeros (the embeddings' class token or patch projection in every supported
    backbone; frozen by every hf-nc method), or ``None`` (no such parameter, or weights not materialised)."""
    for name, p in model.named_parameters():
        if p.is_meta:  # (loaded lazily: nothing to compare)
            return None
        if not p.is_floating_point() or p.numel() == 0:
            continue
        flat = p.detach().reshape(-1)[:4096].double().cpu()
        if bool(flat.abs().max() > 0):
            return {"parameter": name, "values": [float(v) for v in flat[:WEIGHTS_SAMPLE_SIZE]]}
    return None


def weights_sample_mismatch(recorded: Optional[dict], actual: Optional[dict]) -> Optional[str]:
    """Why two :func:`weights_sample` records name different weights, or ``None`` (equal within
    :data:`WEIGHTS_SAMPLE_RTOL`, or either missing: adapters saved before it was recorded)."""
    if not recorded or not actual:
        return None
    if recorded.get("parameter") != actual["parameter"]:
        return f"first parameter {recorded.get('parameter')!r} vs {actual['parameter']!r}"
    a, b = np.asarray(recorded.get("values", []), dtype=float), np.asarray(actual["values"], dtype=float)
    if a.shape != b.shape or not np.all(np.abs(a - b) <= WEIGHTS_SAMPLE_RTOL * np.maximum(np.abs(a), np.abs(b)) + 1e-12):
        return f"{actual['parameter']} starts {np.round(b[:3], 4).tolist()} here, {np.round(a[:3], 4).tolist()} when trained"
    return None


# -- small helpers ------------------------------------------------------------------------------


def first_tensor(output: Any) -> torch.Tensor:
    """The hidden states in a block's output (a tensor, or a tuple/ModelOutput led by one)."""
    if isinstance(output, torch.Tensor):
        return output
    return output[0]


def replace_first(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    output[0] = new  # ModelOutput / list
    return output


def strip_adapter_name(key: str, adapter_name: str, container_attrs: tuple[str, ...]) -> str | None:
    """Removes ``.{attr}.{adapter_name}.`` -> ``.{attr}.`` for module-copy containers, else ``None``."""
    for attr in container_attrs:
        needle = f".{attr}.{adapter_name}."
        if needle in key:
            return key.replace(needle, f".{attr}.", 1)
    return None


# -- layers -------------------------------------------------------------------------------------


class NCCopyLayer(nn.Module, BaseTunerLayer):
    """Wraps a module and holds one trainable deep copy of it per adapter (like ``LNTuningLayer``).

    ``merge`` swaps the copy in as the base layer, so ``merge_and_unload`` returns a plain model
    whose module *is* the tuned copy; ``disable_adapter`` runs the untouched original.
    """

    copy_attr: ClassVar[str] = ""

    def __init__(self, base_layer: nn.Module, adapter_name: str, inference_mode: bool = False):
        super().__init__()
        self.base_layer = base_layer
        setattr(self, self.copy_attr, nn.ModuleDict({}))
        self._active_adapter = adapter_name
        self.merged_adapters = []
        self.update_layer(adapter_name, inference_mode=inference_mode)

    @property
    def copies(self) -> nn.ModuleDict:
        return getattr(self, self.copy_attr)

    def update_layer(self, adapter_name: str, inference_mode: bool = False) -> None:
        self.copies[adapter_name] = copy.deepcopy(self.base_layer)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        # An adapter tuning other blocks has no copy here: this layer has nothing of it to merge
        # (PEFT calls merge on every tuner layer with all the adapters to merge).
        adapter_names = [name for name in adapter_names if name in self.copies]
        if not adapter_names:
            return
        if len(adapter_names) > 1:
            raise ValueError(f"{type(self).__name__} can merge only one adapter at a time, got {adapter_names}")
        if self.merged:
            self.unmerge()
        name = adapter_names[0]
        if safe_merge and not all(torch.isfinite(p).all() for p in self.copies[name].parameters()):
            raise ValueError(f"NaNs or infs in adapter {name!r}: refusing to merge")
        self.base_layer, self.copies[name] = self.copies[name], self.base_layer
        self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        name = self.merged_adapters.pop()
        self.base_layer, self.copies[name] = self.copies[name], self.base_layer

    def _single_active(self) -> str | None:
        """The adapter whose copy runs, or ``None`` for the base layer."""
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return None
        active = [a for a in self.active_adapters if a in self.copies]
        if self.merged or not active:
            return None
        if len(active) > 1:
            raise ValueError(f"{type(self).__name__} runs one adapter at a time, got active adapters {active}")
        return active[0]

    def forward(self, *args, **kwargs):
        name = self._single_active()
        layer = self.base_layer if name is None else self.copies[name]
        return layer(*args, **kwargs)


# -- tuners -------------------------------------------------------------------------------------


class NCTuner(BaseTuner):
    """Base tuner: spec-derived targets, fingerprint checks, complete loads, frozen-prefix cut."""

    target_module_mapping: dict = {}
    #: ModuleDict attributes that hold module copies (their keys need the adapter name stripped).
    copy_containers: ClassVar[tuple[str, ...]] = ()

    # Subclasses: return {module path: role} for the adapter, validating the config.
    def _targets(self, backbone: Backbone, config: NCAdapterConfig) -> dict[str, Any]:
        raise NotImplementedError

    # Subclasses: wrap `target` (role from `_targets`) or update an existing wrapper.
    def _create_or_update(self, config, adapter_name, target, role) -> nn.Module | None:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------
    def _prepare_adapter_config(self, peft_config: NCAdapterConfig, model_config: dict) -> NCAdapterConfig:
        backbone = resolve_backbone(self.model)
        peft_config.check_or_record_base(backbone)
        if peft_config.base_model_class is None:
            peft_config.base_model_class = type(self.model).__name__
        labels = getattr(getattr(self.model, "config", None), "id2label", None)
        if peft_config.id2label is None and backbone.classifier_path is not None and labels:
            peft_config.id2label = {str(k): str(v) for k, v in labels.items()}
        if peft_config.base_model_name_or_path is None:  # (PeftModel(model, config) without get_peft_model)
            peft_config.base_model_name_or_path = getattr(self.model, "name_or_path", None) or None
        roles = self._targets(backbone, peft_config)
        if not hasattr(self, "_nc_roles"):
            self._nc_roles = {}
        self._nc_roles[id(peft_config)] = roles
        peft_config.target_modules = list(roles)
        if peft_config.train_head and backbone.classifier_path is not None:
            extra = list(peft_config.modules_to_save or [])
            if backbone.classifier_path not in extra:
                extra.append(backbone.classifier_path)
            peft_config.modules_to_save = extra
        return peft_config

    def _check_target_module_exists(self, peft_config, key: str):  # exact paths only
        return key in self._nc_roles.get(id(peft_config), {})

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        role = self._nc_roles[id(peft_config)][current_key]
        new_module = self._create_or_update(peft_config, adapter_name, target, role)
        if new_module is None:
            return
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _post_injection_hook(self, model: nn.Module, config: NCAdapterConfig, adapter_name: str) -> None:
        self._install_prefix_cut(model)

    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
                       low_cpu_mem_usage: bool = False, state_dict: Optional[dict[str, torch.Tensor]] = None) -> None:
        """PEFT's injection, then: the frozen-prefix cut for the new adapter too (PEFT runs
        ``_post_injection_hook`` only for the first adapter, not for ``add_adapter`` /
        ``load_adapter``), and, when the config was read by ``from_pretrained``, a check of the
        weights file PEFT is about to load (see :func:`check_adapter_weights_file`)."""
        if not self.__dict__.get("_nc_injected", False):
            self._refuse_a_second_tuner(model, adapter_name)
        super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype,
                               low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)
        self.__dict__["_nc_injected"] = True
        self._install_prefix_cut(model)
        config = self.peft_config[adapter_name]
        source = getattr(config, "_nc_weights_source", None)
        if source is not None and state_dict is None:
            config._nc_weights_source = None  # one check per load
            check_adapter_weights_file(model, config, adapter_name, *source)

    @staticmethod
    def _refuse_a_second_tuner(model: nn.Module, adapter_name: str) -> None:
        """A new tuner on a model that already holds hf-nc adapter layers: that is transformers'
        ``model.load_adapter`` (or PEFT's ``inject_adapter_in_model``) called a second time; a
        ``PeftModel`` adds adapters through its one tuner. With peft 0.21 transformers cannot switch
        between such adapters (its ``set_adapter`` needs peft >= 0.22) and the classification head
        would keep running the first adapter's copy: refuse instead of giving wrong logits."""
        held = sorted({a for m in model.modules() if isinstance(m, BaseTunerLayer)
                       and type(m).__module__.startswith("hf_nc.") for a in _held_adapters(m)})
        if held:
            raise ValueError(
                f"This model already holds the hf-nc adapter(s) {held}, loaded through transformers' "
                f"`model.load_adapter(...)` (or `peft.inject_adapter_in_model`, or by a PeftModel that was not "
                f"unloaded); loading {adapter_name!r} the same way is not supported: transformers cannot switch "
                "between hf-nc adapters with peft < 0.22, and the classification head would keep the first adapter's "
                "weights. Use PEFT's API instead: "
                "`model = peft.PeftModel.from_pretrained(base, first)`, `model.load_adapter(second, "
                "adapter_name='second')`, `model.set_adapter('second')` (or "
                "`hf_nc.AutoPeftModelForImageClassification.from_pretrained(adapter)` for one adapter)."
            )

    # -- frozen-prefix cut ---------------------------------------------------------------
    def first_tuned_block(self, adapter_names: Optional[list[str]] = None) -> int | None:
        """Index of the lowest block that holds a tuner layer of this tuner.

        Args:
            adapter_names: Count only layers holding one of these adapters (default: any adapter).
        """
        backbone = resolve_backbone(self.model)
        for i, block in enumerate(backbone.blocks):
            layers = [m for m in block.modules() if isinstance(m, BaseTunerLayer)]
            if adapter_names is None and layers:
                return i
            if adapter_names is not None and any(_holds(m, a) for m in layers for a in adapter_names):
                return i
        return None

    def _install_prefix_cut(self, model: nn.Module) -> None:
        """Puts a cut hook on each adapter's first tuned block; at run time only the hook at the
        lowest block tuned by the *active* adapters cuts (a cut above a tuned block would starve it
        of gradient, one below it would keep a graph through frozen blocks)."""
        self._remove_prefix_cut()
        self.__dict__.pop("_nc_first_cache", None)
        blocks = resolve_backbone(model).blocks
        firsts = sorted({i for a in self.peft_config if (i := self.first_tuned_block([a])) is not None})
        self._nc_cut_handles = []
        for i in firsts:
            hook = _PrefixCut(self, i)
            self._nc_cut_handles.append(blocks[i].register_forward_pre_hook(hook, with_kwargs=True))

    def _remove_prefix_cut(self) -> None:
        for handle in getattr(self, "_nc_cut_handles", None) or []:
            handle.remove()
        self._nc_cut_handles = []
        handle = getattr(self, "_nc_cut_handle", None)  # (single hook of earlier versions)
        if handle is not None:
            handle.remove()
            self._nc_cut_handle = None

    def _active_first_block(self) -> int | None:
        key = tuple(self.active_adapters)
        cache = self.__dict__.setdefault("_nc_first_cache", {})
        if key not in cache:
            cache.clear()
            cache[key] = self.first_tuned_block(list(self.active_adapters))
        return cache[key]

    def _replace_module(self, parent, child_name, new_module, child) -> None:
        if not isinstance(new_module, BaseTunerLayer):
            # unloading: put the (possibly merged) base module back; it need not have a `weight`
            setattr(parent, child_name, new_module)
            return
        super()._replace_module(parent, child_name, new_module, child)

    def _unload_and_optionally_merge(self, merge=True, progressbar=False, safe_merge=False, adapter_names=None):
        model = super()._unload_and_optionally_merge(
            merge=merge, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names
        )
        self._remove_prefix_cut()
        return model

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        # Copies of base modules must keep the base dtype (as in PEFT's ln_tuning).
        if not self.copy_containers:
            super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype)

    # -- checkpoint keys -----------------------------------------------------------------
    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        stripped = strip_adapter_name(key, adapter_name, cls.copy_containers)
        if stripped is not None:
            return stripped
        return super()._remove_adapter_name_from_key(key, adapter_name)

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        model_sd = model.state_dict()

        def norm(k: str) -> str:
            return k if k in model_sd else k.removeprefix(PEFT_PREFIX) if k.removeprefix(PEFT_PREFIX) in model_sd else PEFT_PREFIX + k

        loaded = {norm(k) for k in remapped}
        prefixes = _get_tuner_state_dict_key_prefixes(model, adapter_name=adapter_name)
        expected = set(_filter_state_dict_by_key_prefixes(model_sd, prefixes))
        for name, module in model.named_modules():
            if isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
                sub = f"{name}.modules_to_save.{adapter_name}."
                expected |= {k for k in model_sd if k.startswith(sub)}
        missing = sorted(expected - loaded)
        unexpected = sorted(k for k in loaded if k not in model_sd)
        if missing or unexpected:
            raise _partial_load_error(config, missing, unexpected)
        return remapped


def _held_adapters(layer: BaseTunerLayer) -> set[str]:
    names = set()
    for attr in getattr(layer, "adapter_layer_names", ()):
        container = getattr(layer, attr, None)
        if hasattr(container, "keys"):
            names |= set(container.keys())
    return names


def _holds(layer: BaseTunerLayer, adapter_name: str) -> bool:
    """Whether a tuner layer holds tensors (or a copy) of ``adapter_name``."""
    for attr in getattr(layer, "adapter_layer_names", ()):
        container = getattr(layer, attr, None)
        if container is not None and adapter_name in container:
            return True
    return False


class _PrefixCut:
    """Forward pre-hook on one adapter's first tuned block; cuts only when that block is the lowest
    block tuned by the active adapters (a plain class, not a closure, so models stay picklable)."""

    def __init__(self, tuner: "NCTuner", index: int):
        self.tuner = tuner
        self.index = index

    def __deepcopy__(self, memo):
        # Copying the whole PeftModel maps the tuner to its copy; copying one module alone must not
        # drag the whole model along.
        return _PrefixCut(memo.get(id(self.tuner), self.tuner), self.index)

    def __call__(self, module, args, kwargs):
        if self.tuner._active_first_block() != self.index:
            return None
        return _detach_hidden_states(module, args, kwargs)


def _reentrant_checkpointing(block: nn.Module) -> bool:
    """Whether ``block`` (or a module inside it, e.g. a Layer FT copy) runs under *reentrant*
    activation checkpointing in this forward pass.

    transformers' ``GradientCheckpointingLayer`` stores ``partial(checkpoint, **kwargs)`` as
    ``_gradient_checkpointing_func`` when ``gradient_checkpointing_enable`` is called; a function
    without an explicit ``use_reentrant`` is treated as reentrant (torch's historical default), the
    safe side: the cut then only costs one input gradient of the first tuned block.
    """
    for m in block.modules():
        if getattr(m, "gradient_checkpointing", False) is True and m.training:
            func = getattr(m, "_gradient_checkpointing_func", None)
            if getattr(func, "keywords", {}).get("use_reentrant", True):
                return True
    return False


def _cut(hidden: torch.Tensor, leaf_requires_grad: bool) -> torch.Tensor:
    cut = hidden.detach()
    if leaf_requires_grad:
        cut.requires_grad_(True)
    return cut


def _detach_hidden_states(module, args, kwargs):
    """Forward pre-hook: cut the autograd graph at the input of the first tuned block.

    Reentrant checkpointing (``torch.utils.checkpoint(..., use_reentrant=True)``) builds a graph,
    and so trains the block's parameters, only when one of the checkpointed call's *inputs*
    requires grad: a detached input would silently leave every tuned parameter without gradient
    (only the head would train). Under reentrant checkpointing the cut therefore hands the block
    a fresh leaf that requires grad: the frozen prefix still keeps no graph and is never
    recomputed, and the tuned block's backward replay runs. (transformers 5 checkpoints a layer's
    ``forward``, so this pre-hook runs before the checkpoint, not inside it.)
    """
    if not torch.is_grad_enabled():
        return None
    leaf = _reentrant_checkpointing(module)
    if args and isinstance(args[0], torch.Tensor):
        if args[0].requires_grad or leaf:
            return (_cut(args[0], leaf), *args[1:]), kwargs
        return None
    hidden = kwargs.get("hidden_states")
    if isinstance(hidden, torch.Tensor) and (hidden.requires_grad or leaf):
        return args, {**kwargs, "hidden_states": _cut(hidden, leaf)}
    return None


def as_index(value: Any, what: str, allow_str: bool = False) -> int:
    """``value`` as a block / head index, refusing anything that is not an integer.

    Accepts Python and NumPy integers (anything ``numbers.Integral`` but ``bool``), and, with
    ``allow_str``, decimal strings such as ``"-1"`` (JSON turns dict keys into strings).

    Raises:
        ValueError: naming ``what`` and the value, for bools, floats (even ``2.0``: an index written
            as a float is more likely a mistake than a choice), other strings and other types.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    if allow_str and isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise ValueError(f"{what} must be an integer index, got {value!r} ({type(value).__name__})")


def as_index_list(value: Any, what: str) -> list[int]:
    """A single index or an iterable of indices (not a string) as a list of ints; see :func:`as_index`."""
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{what} must be an integer index or a list of them, got the string {value!r}")
    if isinstance(value, numbers.Integral) or not isinstance(value, Iterable):
        return [as_index(value, what)]
    return [as_index(v, what) for v in value]


def resolve_layers(backbone: Backbone, layers, what: str) -> list[int]:
    """Normalised, sorted, unique block indices; ValueError (naming the real range) otherwise."""
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if not layers:
        raise ValueError(f"{what}: choose at least one block (0..{backbone.num_layers - 1}, or negative from the end)")
    return sorted({backbone.layer_index(layer) for layer in layers})

