"""FSDP2 (``fully_shard``) round trip of the hf-nc adapters on 2 CPU processes (gloo); run by
tests/test_fsdp.py through ``torchrun --standalone --nproc_per_node 2``.

For each method: the same seeded tiny ViT with the adapter, sharded block by block and at the root;
one SGD step on each rank's half of a batch; the full state dict gathered to rank 0 must equal an
unsharded copy trained on the whole batch (FSDP averages the ranks' gradients); the adapter saved
from that state dict reloads with PEFT's strict loader and gives the unsharded copy's logits.
Rank 0 prints one JSON line: {method: {"state_diff", "unchanged", "reload_diff", "sharded_diff", ...}}.
"""

import copy
import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

import hf_nc  # noqa: E402,F401
from hf_nc.backbones import resolve_backbone  # noqa: E402
from peft import PeftModel, get_peft_model  # noqa: E402
from tiny_models import build_tiny_model, tiny_pixels  # noqa: E402

CONFIGS = {
    "layer_ft": lambda: hf_nc.LayerFTConfig(layers=[1, -1]),
    "scl": lambda: hf_nc.SCLConfig(layer=1),
    "head_ft": lambda: hf_nc.HeadFTConfig(heads={-1: "all", 1: [0, 2]}),
}


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    x = tiny_pixels(batch=4, seed=1)
    labels = torch.tensor([0, 1, 2, 1])
    local = slice(rank * 4 // world, (rank + 1) * 4 // world)
    report = {}
    for method, config_fn in CONFIGS.items():
        model = get_peft_model(build_tiny_model("vit_cls"), config_fn())
        # a non-zero start for every trainable tensor (SCL's delta skip is zero at init)
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            for _, p in sorted(model.named_parameters()):
                if p.requires_grad:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        reference = copy.deepcopy(model)
        trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

        for block in resolve_backbone(model).blocks:
            fully_shard(block)
        fully_shard(model)
        model.train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x[local]).logits, labels[local])
        loss.backward()
        optimizer.step()

        reference.train()
        ref_opt = torch.optim.SGD([p for p in reference.parameters() if p.requires_grad], lr=0.5)
        torch.nn.functional.cross_entropy(reference(pixel_values=x).logits, labels).backward()
        ref_opt.step()

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        model.eval()
        with torch.no_grad():
            sharded_logits = model(pixel_values=x).logits  # every rank runs the same full batch
        if rank == 0:
            ref_sd = reference.state_dict()
            assert set(full) == set(ref_sd), sorted(set(full) ^ set(ref_sd))[:5]
            state_diff = max((full[k].float() - ref_sd[k].float()).abs().max().item() for k in ref_sd)
            # (the key projection's bias gets no gradient: softmax ignores a shift common to all keys)
            unchanged = [n for n in trainable if torch.equal(full[n], before[n])]
            with tempfile.TemporaryDirectory() as tmp:
                reference.save_pretrained(tmp + "/ref")
                model_ref = reference.eval()
                with torch.no_grad():
                    want = model_ref(pixel_values=x).logits
                # PEFT selects the adapter's tensors from the gathered full state dict
                PeftModel.save_pretrained(model, tmp + "/fsdp", state_dict=full)
                reloaded = PeftModel.from_pretrained(build_tiny_model("vit_cls"), tmp + "/fsdp").eval()
                with torch.no_grad():
                    got = reloaded(pixel_values=x).logits
                files = sorted(os.listdir(tmp + "/fsdp"))
            report[method] = {
                "state_diff": state_diff,
                "unchanged": unchanged,
                "num_trainable": len(trainable),
                "reload_diff": (got - want).abs().max().item(),
                "sharded_diff": (sharded_logits - want).abs().max().item(),
                "moved_from_base": (want - build_tiny_model("vit_cls")(pixel_values=x).logits).abs().max().item(),
                "files": files,
            }
        dist.barrier()
    if rank == 0:
        print(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
