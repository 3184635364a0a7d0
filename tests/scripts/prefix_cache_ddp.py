"""Two gloo processes: each rank builds its shard of the prefix cache; DDP training cached == uncached.

Run by tests/test_prefix_cache.py under ``torch.distributed.run --nproc_per_node 2``; writes
``rank{r}.json`` into the folder given as the only argument.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from peft import get_peft_model
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

import hf_nc
import hf_nc.prefix_cache as pc
from hf_nc.backbones import resolve_backbone
from hf_nc.data import collate_fn
from tiny_models import NUM_LABELS, build_tiny_model, tiny_pixels
from tiny_training import train_cross_entropy

N = 11  # odd: the shards differ in size, the shorter one is padded


def make_model():
    return get_peft_model(build_tiny_model("vit_cls", seed=0), hf_nc.SCLConfig(layer=1))


def train(model, dataset, epochs=2, batch=2):
    torch.manual_seed(0)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, collate_fn=collate_fn)
    ddp.train()
    return train_cross_entropy(ddp, loader, opt, epochs)


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    x = tiny_pixels(N, seed=3)
    data = [{"pixel_values": x[i], "labels": i % NUM_LABELS} for i in range(N)]

    uncached = train(make_model(), data)

    model = make_model()
    seen = [0]
    patch = resolve_backbone(model).model.get_submodule("vit.embeddings.patch_embeddings")
    handle = patch.register_forward_hook(lambda m, args, out: seen.__setitem__(0, seen[0] + args[0].shape[0]))
    cache = pc.PrefixCache.build(model, data, collate_fn, batch_size=2, progress=False)
    handle.remove()

    world_fn = pc.cache._dist_rank_world  # where PrefixCache.build looks it up
    pc.cache._dist_rank_world = lambda: (0, 1)  # the single-process reference, in this process
    try:
        single = pc.PrefixCache.build(model, data, collate_fn, batch_size=4, progress=False)
    finally:
        pc.cache._dist_rank_world = world_fn
    same = all(torch.allclose(cache[i]["pixel_values"], single[i]["pixel_values"], rtol=1e-5, atol=1e-6)
               and cache[i]["labels"] == single[i]["labels"] for i in range(N))

    cache.attach(model)
    cached = train(model, cache)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "n": N, "prefix_images": seen[0], "cache_equals_single_process": bool(same),
        "cached_losses": cached, "uncached_losses": uncached,
    }))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
