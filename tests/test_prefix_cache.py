"""Frozen-prefix cache: a cached run equals the uncached run; refusals where it would not.

The reference is always the same training run on images, with the same seed: the cache must
reproduce its loss curve and final weights (logits on held-out images) on every family, for
Layer FT, SCL FT (delta and features skip), head FT and the linear probe, while never running
the frozen prefix during training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from torch.utils.data import DataLoader

import hf_nc
from hf_nc.backbones import resolve_backbone
from hf_nc.data import collate_fn
from hf_nc.prefix_cache import PrefixCache, PrefixCacheError, first_tuned_block, prefix_cache_problems

from tiny_models import CLASSIFIERS, IMAGE, NUM_LABELS, TINY_MODELS, build_tiny_model, tiny_pixels
from tiny_training import train_cross_entropy

SCRIPT = Path(__file__).parent / "scripts" / "prefix_cache_ddp.py"

METHODS = {
    "layer_ft": lambda: hf_nc.LayerFTConfig(layers=[2]),
    "layer_ft_block0": lambda: hf_nc.LayerFTConfig(layers=[0]),  # cache = the stem only (CLIP: + pre_layrnorm)
    "scl_delta": lambda: hf_nc.SCLConfig(layer=1),
    "scl_features": lambda: hf_nc.SCLConfig(layer=2, skip_source="features"),
    "head_ft": lambda: hf_nc.HeadFTConfig(heads={2: "all"}),
    "linear_probe": None,
}
EXPECTED_BLOCK = {"layer_ft": 2, "layer_ft_block0": 0, "scl_delta": 1, "scl_features": 2, "head_ft": 2, "linear_probe": 4}


def _dataset(n=10, seed=1):
    x = tiny_pixels(n, seed=seed)
    return [{"pixel_values": x[i], "labels": i % NUM_LABELS} for i in range(n)]


def _adapt(name: str, method: str, seed: int = 0):
    model = build_tiny_model(name, seed=seed)
    make = METHODS[method]
    if make is None:  # linear probe: every block frozen, the head trains
        model.requires_grad_(False)
        resolve_backbone(model).classifier.requires_grad_(True)
        return model
    return get_peft_model(model, make())


def _train(model, dataset, epochs=3, batch=4, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, collate_fn=collate_fn,
                        generator=torch.Generator().manual_seed(seed))
    model.train()
    losses = train_cross_entropy(model, loader, opt, epochs)
    model.eval()
    return losses


def _prefix_compute_counter(model, block):
    """Counts calls of the Linear/Conv layers of the stem, of blocks < block and (SCL) of block's
    frozen copy: the work the cache must skip."""
    backbone = resolve_backbone(model)
    roots = [backbone.model.get_submodule(p) for p in backbone.stem_paths] + list(backbone.blocks[:block])
    if block < backbone.num_layers and hasattr(backbone.blocks[block], "base_layer"):
        roots.append(backbone.blocks[block].base_layer)
    calls = [0]
    handles = [m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
               for r in roots for m in r.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    return calls, handles


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_cached_training_equals_uncached(name, method):
    data, held_out = _dataset(), tiny_pixels(5, seed=7)
    ref_model = _adapt(name, method)
    with torch.no_grad():
        before = ref_model(pixel_values=held_out).logits.clone()
    ref_losses = _train(ref_model, data)

    model = _adapt(name, method)
    block = first_tuned_block(model)
    assert block == EXPECTED_BLOCK[method]
    rng = torch.get_rng_state()
    cache = PrefixCache.build(model, data, collate_fn, batch_size=3, progress=False)
    assert torch.equal(rng, torch.get_rng_state()), "the build must not consume the training run's random numbers"
    assert len(cache) == len(data) and cache.layout.block == block
    assert cache.layout.parts == (2 if method == "scl_delta" else 1)
    assert [cache[i]["labels"] for i in range(len(data))] == [d["labels"] for d in data]
    calls, handles = _prefix_compute_counter(model, block)
    with cache.attach(model):
        losses = _train(model, cache)
    for h in handles:
        h.remove()
    if method != "layer_ft_block0" or name != "clip_cls":  # CLIP's stem at block 0 has Linear/Conv: counted too
        assert calls[0] == 0, "the frozen prefix ran although its output was cached"

    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the handle is removed: plain image forward of the trained weights
        after_ref, after = ref_model(pixel_values=held_out).logits, model(pixel_values=held_out).logits
    assert (after_ref - before).abs().max() > 1e-3, "training did not move the logits: the test would prove nothing"
    torch.testing.assert_close(after, after_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_cached_forward_equals_image_forward_on_every_model(name):
    """Bare backbones and projection models too: the output from cached rows is the image output."""
    model = get_peft_model(build_tiny_model(name), hf_nc.SCLConfig(layer=2))
    with torch.no_grad():  # make the skip non-zero, so the cached h̄_l matters
        for n, p in model.named_parameters():
            if "hfnc_scl_block" in n:
                p.add_(0.05 * torch.randn_like(p))
    x = tiny_pixels(5)
    data = [{"pixel_values": x[i]} for i in range(5)]
    cache = PrefixCache.build(model, data, batch_size=2, progress=False)
    assert cache.labels is None and set(cache[0]) == {"pixel_values"}
    with torch.no_grad():
        want = model(pixel_values=x)
        with cache.attach(model):
            got = model(pixel_values=torch.stack([cache[i]["pixel_values"] for i in range(5)]))
            images_still_work = model(pixel_values=x)
    for key in ("logits", "last_hidden_state", "pooler_output", "image_embeds"):
        if getattr(want, key, None) is not None:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(images_still_work[key], want[key], rtol=0, atol=0)


def test_dropout_in_the_tuned_blocks_stays_exact():
    """Dropout above the cut is fine: the prefix consumes no random numbers, cached or not."""

    def make():
        model = build_tiny_model("vit_cls")
        for block in resolve_backbone(model).blocks[2:]:
            for m in block.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.2
        return get_peft_model(model, hf_nc.LayerFTConfig(layers=[2]))

    data = _dataset()
    ref = make()
    ref_losses = _train(ref, data)
    model = make()
    cache = PrefixCache.build(model, data, collate_fn, progress=False)
    with cache.attach(model):
        losses = _train(model, cache)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)


def test_trainer_cached_equals_uncached_and_saves_the_normal_adapter(tmp_path):
    from transformers import Trainer, TrainingArguments

    data, held_out = _dataset(), tiny_pixels(4, seed=9)
    ref = get_peft_model(build_tiny_model("vit_cls"), hf_nc.SCLConfig(layer=1))
    args = dict(per_device_train_batch_size=4, num_train_epochs=3, learning_rate=5e-2, logging_steps=1,
                save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    t_ref = Trainer(model=ref, args=TrainingArguments(output_dir=str(tmp_path / "a"), **args), train_dataset=data,
                    data_collator=collate_fn)
    t_ref.train()

    model = get_peft_model(build_tiny_model("vit_cls"), hf_nc.SCLConfig(layer=1))
    cache = PrefixCache.build(model, data, collate_fn, progress=False)
    cache.attach(model)
    t = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "b"), **args), train_dataset=cache,
                data_collator=collate_fn)
    t.train()
    losses = [h["loss"] for h in t.state.log_history if "loss" in h]
    ref_losses = [h["loss"] for h in t_ref.state.log_history if "loss" in h]
    assert len(losses) == len(ref_losses) == 9
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4, atol=1e-6)  # the Trainer logs rounded losses

    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        want = ref.eval()(pixel_values=held_out).logits
        got = model(pixel_values=held_out).logits
        reloaded = PeftModel.from_pretrained(build_tiny_model("vit_cls"), tmp_path / "adapter").eval()
        again = reloaded(pixel_values=held_out).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    saved = set(json.loads((tmp_path / "adapter" / "adapter_config.json").read_text()))
    assert "peft_type" in saved


# -- refusals ----------------------------------------------------------------------------------


def _with_config(name, **overrides):
    model_cls, config_fn = TINY_MODELS[name]
    config = config_fn()
    target = getattr(config, "vision_config", config)
    for k, v in overrides.items():
        setattr(target, k, v)
    torch.manual_seed(0)
    return get_peft_model(model_cls(config), hf_nc.LayerFTConfig(layers=[2]))


@pytest.mark.parametrize(
    "name,overrides,needle",
    [
        ("vit_cls", {"hidden_dropout_prob": 0.1}, ".p=0.1"),
        ("vit_cls", {"attention_probs_dropout_prob": 0.1}, "attention_dropout=0.1"),
        ("deit_cls", {"hidden_dropout_prob": 0.1}, ".p=0.1"),
        ("dinov2_cls", {"drop_path_rate": 0.1}, "drop_prob=0.1"),
        ("clip_cls", {"attention_dropout": 0.1}, "dropout=0.1"),
        ("siglip_cls", {"attention_dropout": 0.1}, "dropout=0.1"),
    ],
)
def test_refuses_dropout_or_stochastic_depth_in_the_prefix(name, overrides, needle):
    model = _with_config(name, **overrides)
    with pytest.raises(PrefixCacheError, match="dropout or stochastic depth") as err:
        PrefixCache.build(model, _dataset(4), collate_fn, progress=False)
    assert needle in str(err.value)
    assert "layers.0" in str(err.value) or "layer.0" in str(err.value) or "embeddings" in str(err.value)


def test_refuses_dropout_in_the_frozen_scl_block():
    model = build_tiny_model("vit_cls")
    for m in resolve_backbone(model).blocks[1].modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.1  # only block 1: the SCL delta skip runs its frozen copy live every step
    model = get_peft_model(model, hf_nc.SCLConfig(layer=1))
    problems = prefix_cache_problems(model)
    assert len(problems) == 1 and "layers.1.base_layer" in problems[0]


def test_refuses_a_prefix_that_is_not_frozen():
    model = get_peft_model(build_tiny_model("vit_cls"), hf_nc.LayerFTConfig(layers=[2]))
    resolve_backbone(model).model.get_submodule("vit.embeddings").requires_grad_(True)
    with pytest.raises(PrefixCacheError, match="not frozen"):
        PrefixCache.build(model, _dataset(4), collate_fn, progress=False)
    full = build_tiny_model("vit_cls")  # full fine-tuning: nothing to cache
    assert first_tuned_block(full) == 0
    assert any("not frozen" in p for p in prefix_cache_problems(full))
    lf = get_peft_model(build_tiny_model("vit_cls"), hf_nc.LayerFTConfig(layers=[2]))
    (problem,) = prefix_cache_problems(lf, block=3)  # block 2 trains: it cannot be cached
    assert "not frozen" in problem and "(block=2)" in problem and "hfnc_layer_ft_copy" in problem


def test_refuses_training_augmentation():
    from datasets import Dataset, Features, Image as ImageFeature, Value
    from PIL import Image

    model = get_peft_model(build_tiny_model("vit_cls"), hf_nc.LayerFTConfig(layers=[2]))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (IMAGE + 4, IMAGE + 4, 3), dtype=np.uint8)) for _ in range(4)]
    ds = Dataset.from_dict({"image": images, "label": [0, 1, 2, 0]},
                           features=Features({"image": ImageFeature(), "label": Value("int64")}))
    augmented = ds.with_transform(hf_nc.build_transforms(model, train=True, augment="crop,flip"))
    with pytest.raises(PrefixCacheError, match="augmentation"):
        PrefixCache.build(model, augmented, collate_fn, progress=False)
    plain = ds.with_transform(hf_nc.build_transforms(model, train=True, augment="none"))
    cache = PrefixCache.build(model, plain, collate_fn, progress=False)
    assert len(cache) == 4 and cache[3]["labels"] == 0

    class Noisy(torch.utils.data.Dataset):  # a foreign random transform: caught by reading items twice
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"pixel_values": torch.randn(3, IMAGE, IMAGE), "labels": 0}

    state = torch.get_rng_state()
    with pytest.raises(PrefixCacheError, match="differs between two reads"):
        PrefixCache.build(model, Noisy(), collate_fn, progress=False)
    assert torch.equal(state, torch.get_rng_state())


class Compose:  # torchvision's shape, without torchvision
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, x):
        return x.flip(-1) if bool(torch.rand(1) < self.p) else x


class Normalize:
    def __call__(self, x):
        return (x - 0.5) / 0.5


def _with_transform(transform):
    from datasets import Dataset

    ds = Dataset.from_dict({"x": tiny_pixels(8, seed=3).tolist(), "label": [0, 1, 2, 0, 1, 2, 0, 1]})

    def apply(batch):  # the usual with_transform function: the augmentation is a closure variable
        return {"pixel_values": [transform(torch.tensor(x)) for x in batch["x"]], "labels": batch["label"]}

    return ds.with_transform(apply)


@pytest.mark.parametrize("seed", range(20))
def test_refuses_a_rare_random_transform_in_a_with_transform_function(seed):
    # a flip with p=0.1 drew the same twice on all 4 probed items about every other build, so the cache
    # silently froze one draw per image; the transform's random parts are now found by what they are
    model = get_peft_model(build_tiny_model("vit_cls"), hf_nc.LayerFTConfig(layers=[2]))
    augmented = _with_transform(Compose([RandomHorizontalFlip(p=0.1), Normalize()]))
    torch.manual_seed(seed)
    with pytest.raises(PrefixCacheError, match=r"training augmentation \(RandomHorizontalFlip\)"):
        PrefixCache.build(model, augmented, collate_fn, progress=False)
    assert len(PrefixCache.build(model, _with_transform(Compose([Normalize()])), collate_fn, progress=False)) == 8


def test_attach_checks_the_model_and_the_rows():
    data = _dataset(4)
    model = get_peft_model(build_tiny_model("vit_cls"), hf_nc.LayerFTConfig(layers=[2]))
    cache = PrefixCache.build(model, data, collate_fn, progress=False)
    other = get_peft_model(build_tiny_model("vit_cls"), hf_nc.LayerFTConfig(layers=[1]))
    with pytest.raises(PrefixCacheError, match="first tuned block is 1"):
        cache.attach(other)
    scl = get_peft_model(build_tiny_model("vit_cls"), hf_nc.SCLConfig(layer=2))
    with pytest.raises(PrefixCacheError, match="SCL"):
        cache.attach(scl)
    handle = cache.attach(model)
    assert cache.attach(model) is handle  # same layout: one set of patches
    with pytest.raises(PrefixCacheError, match="rows of shape"):
        model(pixel_values=torch.zeros(2, 7, 32))
    handle.remove()
    emb = resolve_backbone(model).model.get_submodule("vit.embeddings")
    assert "forward" not in emb.__dict__


@pytest.mark.parametrize("method", ["layer_ft", "scl_delta", "linear_probe"])
@pytest.mark.parametrize("change", ["other_checkpoint", "edited_prefix", "other_dtype"])
def test_rows_of_other_frozen_weights_are_refused(method, change):
    # a cache built on one model used to attach to another of the same shape (another checkpoint, a prefix
    # edited before training, another dtype) and silently fed the tuned block the first model's hidden states
    data = _dataset(4)
    model = _adapt("vit_cls", method)
    cache = PrefixCache.build(model, data, collate_fn, progress=False)
    block = cache.layout.block
    other = _adapt("vit_cls", method, seed=1 if change == "other_checkpoint" else 0)
    frozen = [p for p in resolve_backbone(other).blocks[0].parameters() if p.dim() == 2]
    if change == "edited_prefix":
        with torch.no_grad():
            frozen[0].mul_(1.05)  # one weight matrix of the frozen block 0
    elif change == "other_dtype":
        other.to(torch.bfloat16)
    rows = collate_fn([cache[i] for i in range(len(data))])["pixel_values"].to(next(other.parameters()).dtype)
    images = collate_fn(data)["pixel_values"].to(rows.dtype)
    with PrefixCache.build(other, data, collate_fn, progress=False).attach(other):
        wrong = other.eval()(pixel_values=rows).logits  # (what the stale rows gave, with a fresh handle)
    assert not torch.allclose(wrong, other(pixel_values=images).logits, atol=1e-6)
    with pytest.raises(PrefixCacheError, match=r"built with other frozen weights than this model's \((.* has other values"
                                                 r"|the frozen tensors differ: dtype bfloat16 here, float32 when built)"):
        cache.attach(other)
    assert "forward" not in resolve_backbone(other).model.get_submodule("vit.embeddings").__dict__  # nothing patched
    with cache.attach(_adapt("vit_cls", method)) as handle:  # the same weights rebuilt: accepted
        assert handle.layout.block == block


# -- memory ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_over_the_budget_the_cache_is_a_memmap_and_its_size_is_printed(tmp_path, capsys, dtype):
    data = [{"pixel_values": d["pixel_values"].to(dtype), "labels": d["labels"]} for d in _dataset(6)]
    model = get_peft_model(build_tiny_model("dinov2_cls").to(dtype), hf_nc.SCLConfig(layer=1))
    in_ram = PrefixCache.build(model, data, collate_fn, progress=True)
    printed = capsys.readouterr().out
    row_bytes = 2 * 5 * 32 * (4 if dtype == torch.float32 else 2)  # (h_l, h̄_l) x 5 tokens x width 32
    assert not in_ram.on_disk and in_ram.nbytes == 6 * row_bytes
    assert "6 images x 5 tokens x 32 x 2 (+ the frozen block's output, SCL delta)" in printed and "in RAM" in printed
    assert f"{6 * row_bytes / 1024:.1f} KiB" in printed

    on_disk = PrefixCache.build(model, data, collate_fn, memory_budget="1KB", cache_dir=str(tmp_path), progress=True)
    printed = capsys.readouterr().out
    assert on_disk.on_disk and "memory-mapped" in printed and str(tmp_path) in printed
    assert os.path.getsize(on_disk.path) >= 6 * row_bytes
    for i in range(6):
        assert on_disk[i]["pixel_values"].dtype == dtype
        assert torch.equal(on_disk[i]["pixel_values"], in_ram[i]["pixel_values"])
        assert on_disk[i]["labels"] == in_ram[i]["labels"]
    path = on_disk.path
    on_disk.close()
    assert not os.path.exists(path) and os.path.isdir(tmp_path)  # the file goes, a given folder stays
    tmp_default = PrefixCache.build(model, data, collate_fn, memory_budget=0, progress=False)
    folder = os.path.dirname(tmp_default.path)
    assert os.path.exists(tmp_default.path)
    tmp_default.close()
    assert not os.path.exists(folder), "the temporary folder of a memmap cache is removed with it"


def test_memory_budget_parsing():
    from hf_nc.prefix_cache.storage import _parse_bytes

    assert _parse_bytes("4GB") == 4 * 2**30 and _parse_bytes("512MiB") == 512 * 2**20 and _parse_bytes(10) == 10
    with pytest.raises(ValueError, match="memory_budget"):
        _parse_bytes("lots")


# -- DDP ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_each_compute_a_shard_and_train_exactly(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(SCRIPT), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    n = ranks[0]["n"]
    # each rank ran the prefix on its own shard only (+1 probe image), not on all n images
    assert [r["prefix_images"] for r in ranks] == [(n + 1) // 2 + 1, (n + 1) // 2 + 1]
    for r in ranks:
        assert r["cache_equals_single_process"], r
        np.testing.assert_allclose(r["cached_losses"], r["uncached_losses"], rtol=1e-5, atol=1e-6)
    assert ranks[0]["cached_losses"] != ranks[1]["cached_losses"]  # the ranks saw different batches


# -- NCTrainer: training, evaluation and NC logging from caches ----------------------------------


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_nctrainer_with_nc_logging_cached_equals_uncached(name, tmp_path):
    """Train, eval and train-subset data all served from caches: the same losses, eval metrics and
    NC metrics (eval and train subset) as the run on images."""
    from transformers import TrainingArguments

    from hf_nc.trainer import NCTrainer

    train, test = _dataset(12, seed=1), _dataset(6, seed=2)

    def run(out, cached):
        model = get_peft_model(build_tiny_model(name), hf_nc.SCLConfig(layer=1))
        tr, te = train, test
        if cached:
            tr = PrefixCache.build(model, train, collate_fn, progress=False)
            te = PrefixCache.build(model, test, collate_fn, progress=False)
            tr.attach(model)
            assert te.attach(model) is tr.attach(model)  # one set of patches serves both caches
        args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, per_device_eval_batch_size=4,
                                 num_train_epochs=2, learning_rate=5e-2, logging_steps=1, eval_strategy="epoch",
                                 save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
        trainer = NCTrainer(model=model, args=args, train_dataset=tr, eval_dataset=te, data_collator=collate_fn,
                            nc_train_dataset=tr, nc_train_samples=-1, nc_num_classes=NUM_LABELS)
        trainer.train()
        return trainer.state.log_history

    ref, got = run(tmp_path / "a", False), run(tmp_path / "b", True)
    assert len(ref) == len(got)
    compared = 0
    for a, b in zip(ref, got):
        for key, value in a.items():
            if isinstance(value, float) and "runtime" not in key and "per_second" not in key and "flos" not in key:
                np.testing.assert_allclose(b[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
                compared += "nc1" in key
    assert compared >= 4, "the NC metrics (eval and train subset, 2 evaluations) were not compared"


def test_build_or_none_warns_and_falls_back():
    model = _with_config("vit_cls", hidden_dropout_prob=0.1)
    with pytest.warns(UserWarning, match="Training without the prefix cache"):
        assert PrefixCache.build_or_none(model, _dataset(4), collate_fn, progress=False) is None
    ok = get_peft_model(build_tiny_model("vit_cls"), hf_nc.LayerFTConfig(layers=[2]))
    cache = PrefixCache.build_or_none(ok, _dataset(4), collate_fn, progress=False)
    assert cache is not None and list(cache.targets) == [0, 1, 2, 0]


def test_mixed_precision_cache_matches_autocast_training():
    """Under bf16 autocast the prefix computes other states than in float32: built under the same
    autocast, the cache reproduces the autocast run."""

    def train_amp(model, dataset):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return _train(model, dataset, epochs=2)

    data = _dataset(8)
    ref_losses = train_amp(_adapt("vit_cls", "layer_ft"), data)
    model = _adapt("vit_cls", "layer_ft")
    cache = PrefixCache.build(model, data, collate_fn, progress=False, autocast_dtype=torch.bfloat16)
    plain = PrefixCache.build(model, data, collate_fn, progress=False)
    assert not torch.equal(cache[0]["pixel_values"], plain[0]["pixel_values"])
    with cache.attach(model):
        losses = train_amp(model, cache)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)


def test_collator_inputs_reach_the_prefix_as_in_training():
    """A collator's extra inputs (the recipes add interpolate_pos_encoding=True at another image
    size) are passed to the model in the pre-pass too: 24 px images on a 16 px ViT."""

    def collate(examples):
        return {**collate_fn(examples), "interpolate_pos_encoding": True}

    def train(model, dataset):
        torch.manual_seed(0)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
        losses = []
        model.train()
        for b in DataLoader(dataset, batch_size=4, shuffle=True, collate_fn=collate, generator=torch.Generator().manual_seed(0)):
            labels = b.pop("labels")
            loss = F.cross_entropy(model(**b).logits, labels)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        return losses

    g = torch.Generator().manual_seed(0)
    data = [{"pixel_values": torch.randn(3, 24, 24, generator=g), "labels": i % NUM_LABELS} for i in range(8)]
    ref = train(_adapt("vit_cls", "scl_delta"), data)
    model = _adapt("vit_cls", "scl_delta")
    cache = PrefixCache.build(model, data, collate, progress=False)
    assert cache.layout.num_tokens == 1 + (24 // 8) ** 2
    with cache.attach(model):
        got = train(model, cache)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


# -- the recipes' --cache_frozen_prefix ---------------------------------------------------------

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("method,extra", [("scl", ["--layer", "1"]), ("linear_probe", []), ("full", [])])
def test_recipe_cache_frozen_prefix_matches_uncached(method, extra, tmp_path):
    sys.path.insert(0, str(RECIPES))
    try:
        import common
        import finetune_vit
    finally:
        sys.path.remove(str(RECIPES))
    assert "cache_frozen_prefix" in common.MethodArguments.__dataclass_fields__
    build_tiny_model("vit_cls").save_pretrained(tmp_path / "tiny")
    quick = ["--model_name_or_path", str(tmp_path / "tiny"), "--method", method, *extra, "--max_steps", "4",
             "--shots_per_class", "3", "--max_eval_samples", "20", "--nc_train_samples", "20", "--report_to", "none",
             "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--eval_strategy", "steps",
             "--eval_steps", "2"]
    ref = finetune_vit.main([*quick, "--output_dir", str(tmp_path / "a")])["metrics"]
    if method == "full":  # nothing frozen to cache: a warning, then the uncached run
        with pytest.warns(UserWarning, match="not frozen"):
            got = finetune_vit.main([*quick, "--output_dir", str(tmp_path / "b"), "--cache_frozen_prefix", "true"])["metrics"]
    else:
        got = finetune_vit.main([*quick, "--output_dir", str(tmp_path / "b"), "--cache_frozen_prefix", "true"])["metrics"]
    keys = [k for k, v in ref.items() if isinstance(v, float) and "runtime" not in k and "per_second" not in k]
    assert any("nc1" in k for k in keys)
    for k in keys:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("budget", ["4GB", 0])
def test_pickled_copy_for_spawned_workers(budget):
    """What DataLoader workers started with "spawn" receive: a memmap cache travels as its path."""
    import pickle

    model = get_peft_model(build_tiny_model("vit_cls"), hf_nc.SCLConfig(layer=1))
    cache = PrefixCache.build(model, _dataset(5), collate_fn, memory_budget=budget, progress=False)
    blob = pickle.dumps(cache)
    if cache.on_disk:
        assert len(blob) < cache.nbytes / 2, "a memmap cache must travel as its path"
    copy_ = pickle.loads(blob)
    for i in range(5):
        assert torch.equal(copy_[i]["pixel_values"], cache[i]["pixel_values"]) and copy_[i]["labels"] == cache[i]["labels"]
    del copy_
    assert cache.path is None or os.path.exists(cache.path), "a copy must not delete the original's file"
