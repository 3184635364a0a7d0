#!/usr/bin/env python
"""Pre-train a small ViT from scratch on a source image dataset, logging source NC1.

The paper's pre-training choices are flags: the loss (``ce``, ``label_smoothing``, ``mse``,
``supcon``), a projection head (used in training, dropped from the saved model), data
augmentation, epochs, seed and model size. NC1 of the penultimate features (the final-layernorm
CLS token that enters the classifier) is measured on a fixed subset of the training data before
training and after every epoch (``hf_nc.metrics.NCStats``, all-reduced across processes).

With ``supcon`` or ``--projection_head`` the saved classifier is a linear head fitted afterwards
on the frozen penultimate features (full-batch CE).

Output: a ``save_pretrained`` checkpoint (config.json with id2label, model.safetensors in fp32,
preprocessor_config.json) that ``ViTForImageClassification.from_pretrained`` loads, a model card
(README.md) and history.json.

    python recipes/pretrain_vit.py --output_dir runs/vit --dataset digits --max_steps 50
    accelerate launch recipes/pretrain_vit.py --output_dir runs/vit --loss supcon --augment crop,flip
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from recipe_args import check_sample_count
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import HfArgumentParser, ViTConfig, ViTForImageClassification, get_cosine_schedule_with_warmup

from hf_nc.accelerate_utils import build_accelerator
from hf_nc.data import build_transforms, collate_fn, load_image_dataset, stratified_subset
from hf_nc.metrics import NCStats

LOSSES = ("ce", "label_smoothing", "mse", "supcon")


@dataclass
class DataArguments:
    dataset: str = field(default="fashion_mnist", metadata={"help": "built-in name, local folder or Hub name"})
    classes: Optional[str] = field(default=None, metadata={"help": "comma-separated source classes, e.g. 0,1,2,3,4"})
    shots_per_class: Optional[int] = field(default=None, metadata={"help": "few-shot source training set"})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "seeded random subset (tests)"})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "seeded (--seed), stratified subset of N test images"})
    augment: str = field(default="none", metadata={"help": "none | crop | flip | crop,flip"})
    crop_scale_min: float = field(default=0.8, metadata={"help": "random resized crop: smallest area share"})
    nc_samples: int = field(default=2000, metadata={"help": "size of the fixed training subset for source NC"})
    num_workers: int = 0


@dataclass
class ModelArguments:
    image_size: int = 28
    patch_size: int = 4
    num_channels: int = 1
    hidden_size: int = 64
    num_hidden_layers: int = 12
    num_attention_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    projection_head: bool = field(default=False, metadata={"help": "MLP (Linear-BN-ReLU-Linear) on the features in training, not saved"})
    projection_dim: int = 64


@dataclass
class PretrainArguments:
    output_dir: str = field(metadata={"help": "where the checkpoint, card and history go"})
    loss: str = field(default="ce", metadata={"help": "ce | label_smoothing | mse | supcon"})
    label_smoothing: float = 0.1
    supcon_temperature: float = 0.1
    num_train_epochs: float = 3.0
    max_steps: int = field(default=-1, metadata={"help": "if > 0: stop after this many optimizer steps"})
    per_device_train_batch_size: int = 128
    per_device_eval_batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_ratio: float = 0.05
    gradient_accumulation_steps: int = 1
    seed: int = 0
    head_fit_steps: int = field(default=300, metadata={"help": "full-batch CE steps of the refitted linear head"})
    logging_steps: int = 25
    eval_each_epoch: bool = True
    save_each_epoch: bool = field(default=True, metadata={"help": "keep a resumable state (model, optimizer, schedule, RNG, "
                                                          "history) in <output_dir>/last_epoch after every epoch; removed when done"})
    resume_from_checkpoint: bool = field(default=False, metadata={"help": "go on from <output_dir>/last_epoch of an interrupted "
                                                                  "run with the same flags (same result as an uninterrupted run)"})
    torch_threads: int = field(default=0, metadata={"help": "torch.set_num_threads if > 0 (1 helps on busy CPUs)"})
    model_name: Optional[str] = field(default=None, metadata={"help": "title of the model card"})


class PretrainNet(nn.Module):
    """A ViTForImageClassification plus the training-only parts (projection head, its classifier)."""

    def __init__(self, backbone: ViTForImageClassification, margs: ModelArguments, loss: str):
        super().__init__()
        self.backbone, self.loss_name = backbone, loss
        d, k = backbone.config.hidden_size, backbone.config.num_labels
        self.projection = None
        if margs.projection_head:
            # SimCLR-style MLP; its BatchNorm also breaks the near-identical CLS features of a fresh ViT
            self.projection = nn.Sequential(
                nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(), nn.Linear(d, margs.projection_dim)
            )
            if loss != "supcon":
                self.projection_classifier = nn.Linear(margs.projection_dim, k)

    def features(self, pixel_values):  # penultimate: final-layernorm CLS token (input of the classifier)
        return self.backbone.vit(pixel_values).last_hidden_state[:, 0]

    def forward(self, pixel_values):
        h = self.features(pixel_values)
        z = self.projection(h) if self.projection is not None else h
        if self.loss_name == "supcon":
            return z, None
        head = self.projection_classifier if self.projection is not None else self.backbone.classifier
        return z, head(z)


def supcon_loss(z, labels, temperature: float):
    """Supervised contrastive loss (Khosla et al. 2020) on L2-normalised features; every other
    sample of the same label in the batch (including a second view) is a positive."""
    z = F.normalize(z, dim=1)
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    npos = pos.sum(1)
    valid = npos > 0
    if not valid.any():
        return z.sum() * 0.0
    return -(log_prob.masked_fill(~pos, 0.0).sum(1)[valid] / npos[valid]).mean()


def compute_loss(net, batch, args: PretrainArguments, num_labels: int):
    labels = batch["labels"]
    if args.loss == "supcon":
        x = batch["pixel_values"]
        if "pixel_values_2" in batch:  # two augmented views
            x, labels = torch.cat([x, batch["pixel_values_2"]]), torch.cat([labels, labels])
        z, _ = net(x)
        return supcon_loss(z, labels, args.supcon_temperature)
    _, logits = net(batch["pixel_values"])
    if args.loss == "ce":
        return F.cross_entropy(logits, labels)
    if args.loss == "label_smoothing":
        return F.cross_entropy(logits, labels, label_smoothing=args.label_smoothing)
    if args.loss == "mse":  # squared error to one-hot targets, summed over classes
        return F.mse_loss(logits, F.one_hot(labels, num_labels).to(logits.dtype), reduction="sum") / len(labels)
    raise ValueError(f"unknown loss {args.loss!r}; choose from {LOSSES}")


@torch.no_grad()
def source_nc(accelerator, net, nc_dataset, batch_size: int) -> dict:
    """NC metrics of the penultimate features on the fixed subset; each process takes every
    world_size-th sample (no padding duplicates), then the statistics are all-reduced."""
    net = accelerator.unwrap_model(net)
    was_training = net.training
    net.eval()
    shard = nc_dataset.select(range(accelerator.process_index, len(nc_dataset), accelerator.num_processes))
    stats = NCStats(net.backbone.config.num_labels, net.backbone.config.hidden_size)
    for batch in DataLoader(shard, batch_size=batch_size, collate_fn=collate_fn):
        stats.update(net.features(batch["pixel_values"].to(accelerator.device)).float(), batch["labels"])
    stats.all_reduce()
    net.train(was_training)
    return stats.compute()


@torch.no_grad()
def evaluate(accelerator, net, loader) -> float:
    """Top-1 accuracy of the saved model (backbone + classifier) on the (prepared) test loader."""
    model = accelerator.unwrap_model(net).backbone
    was_training = model.training
    model.eval()
    correct = total = 0
    for batch in loader:
        preds = model(pixel_values=batch["pixel_values"]).logits.argmax(-1)
        preds, labels = accelerator.gather_for_metrics((preds, batch["labels"]))
        correct += (preds == labels).sum().item()
        total += labels.numel()
    model.train(was_training)
    return correct / max(total, 1)


@torch.no_grad()
def _gather_features(accelerator, net, loader):
    feats, labels = [], []
    for batch in loader:
        f, y = accelerator.gather_for_metrics((net.features(batch["pixel_values"]), batch["labels"]))
        feats.append(f.float().cpu())
        labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels)


def fit_linear_head(accelerator, net, loader, steps: int, seed: int) -> float:
    """Fit the backbone's classifier on frozen penultimate features (full-batch CE with Adam).
    Every process fits the same head on the same gathered features. Returns the train accuracy."""
    net = accelerator.unwrap_model(net)
    net.eval()
    x, y = _gather_features(accelerator, net, loader)
    head = nn.Linear(x.shape[1], net.backbone.config.num_labels)
    torch.manual_seed(seed)
    head.reset_parameters()
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    mu, sd = x.mean(0), x.std(0) + 1e-6  # standardise for a well-conditioned fit, then fold back in
    xs = (x - mu) / sd
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(xs), y).backward()
        opt.step()
    with torch.no_grad():
        w = head.weight / sd
        b = head.bias - w @ mu
        cls = net.backbone.classifier
        cls.weight.copy_(w.to(cls.weight))
        cls.bias.copy_(b.to(cls.bias))
        acc = (cls(x.to(cls.weight)).argmax(-1).cpu() == y).float().mean().item()
    net.train()
    return acc


def build_model(margs: ModelArguments, names: list[str]) -> ViTForImageClassification:
    config = ViTConfig(
        image_size=margs.image_size,
        patch_size=margs.patch_size,
        num_channels=margs.num_channels,
        hidden_size=margs.hidden_size,
        num_hidden_layers=margs.num_hidden_layers,
        num_attention_heads=margs.num_attention_heads,
        intermediate_size=margs.mlp_ratio * margs.hidden_size,
        hidden_dropout_prob=margs.dropout,
        attention_probs_dropout_prob=margs.dropout,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    return ViTForImageClassification(config)


def image_processor_for(config):
    """The checkpoint's image processor (PIL backend, no torchvision): ``ViTImageProcessorPil``, or for a
    1-channel model ``hf_nc.GrayscaleViTImageProcessor``, which ``pipeline()`` can feed (it passes RGB)."""
    from hf_nc.processing import vit_image_processor

    c = config.num_channels
    return vit_image_processor(c, size={"height": config.image_size, "width": config.image_size}, image_mean=[0.5] * c, image_std=[0.5] * c)


def write_card(path: Path, title: str, record: dict) -> None:
    """The checkpoint's README.md: ``hf_nc.cards.pretrained_card`` (ModelCard + template, model-index)."""
    from hf_nc.cards import pretrained_card

    pretrained_card(record, title).save(path)


def check_budget_flags(args: PretrainArguments, refit_head: bool) -> None:
    """Step-count flags checked before any work: 0 or negative epochs used to save an untrained model as a
    pre-trained one, ``--logging_steps 0`` to fail at the first step (integer modulo by zero), and
    ``--head_fit_steps 0`` to save a random classifier where the head is refitted."""
    counts = {"--per_device_train_batch_size": args.per_device_train_batch_size,
              "--per_device_eval_batch_size": args.per_device_eval_batch_size,
              "--gradient_accumulation_steps": args.gradient_accumulation_steps, "--logging_steps": args.logging_steps}
    if refit_head:
        counts["--head_fit_steps (the classifier is refitted with --loss supcon or --projection_head)"] = args.head_fit_steps
    for flag, value in counts.items():
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.max_steps <= 0 and not args.num_train_epochs > 0:
        raise ValueError(f"--num_train_epochs must be > 0 (or --max_steps >= 1), got {args.num_train_epochs}: "
                         "the run would train no step")
    if not 0 <= args.warmup_ratio <= 1:
        raise ValueError(f"--warmup_ratio must be in [0, 1], got {args.warmup_ratio}")


# flags that only one loss (or the projection head) reads: set to another value without it, they would be
# silently ignored (e.g. --label_smoothing 0.2 with the default --loss ce trains plain cross-entropy)
FLAG_NEEDS = {"label_smoothing": ("--loss label_smoothing", lambda m, a: a.loss == "label_smoothing"),
              "supcon_temperature": ("--loss supcon", lambda m, a: a.loss == "supcon"),
              "projection_dim": ("--projection_head", lambda m, a: m.projection_head)}


def unused_flag_errors(margs: ModelArguments, args: PretrainArguments) -> list[str]:
    """One message per flag given a non-default value that the chosen loss / head never reads, and for a
    projection head trained on batches of one image (its BatchNorm needs two)."""
    errors = []
    for name, (needs, used) in FLAG_NEEDS.items():
        owner = margs if hasattr(margs, name) else args
        default = type(owner).__dataclass_fields__[name].default
        if getattr(owner, name) != default and not used(margs, args):
            errors.append(f"--{name} {getattr(owner, name)} applies only with {needs} (it would be ignored)")
    if margs.projection_head and args.per_device_train_batch_size < 2:
        errors.append("--projection_head needs --per_device_train_batch_size >= 2 (its BatchNorm normalises over the batch)")
    return errors


def check_output_dir(path: str, create: bool) -> Path:
    """``--output_dir`` checked (and created on the main process) before any training, so that a path
    that cannot hold the checkpoint fails now instead of after the last epoch."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {path} exists and is not a folder: the checkpoint cannot be written there")
    if create:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--output_dir {path} cannot be created: {e}") from e
    if out.is_dir() and not os.access(out, os.W_OK):
        raise ValueError(f"--output_dir {path} is not writable")
    return out


RESUME_DIR = "last_epoch"
#: flags that may differ between an interrupted run and its resumption (they change no number)
RESUME_FREE = ("output_dir", "resume_from_checkpoint", "save_each_epoch", "torch_threads", "logging_steps", "num_workers")


def run_flags(dargs, margs, args) -> dict:
    """Every flag that shapes the training, as compared on resumption."""
    flags = {**asdict(dargs), **asdict(margs), **asdict(args)}
    return {k: v for k, v in flags.items() if k not in RESUME_FREE}


def save_progress(accelerator, out: Path, flags: dict, progress: dict) -> None:
    """The state after a finished epoch: written to a new folder, then swapped in, so an interruption
    while saving leaves the previous epoch's state whole."""
    final, tmp = out / RESUME_DIR, out / (RESUME_DIR + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / "progress.json").write_text(json.dumps({"flags": flags, **progress}))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    accelerator.wait_for_everyone()


def load_progress(accelerator, out: Path, flags: dict) -> dict:
    """The saved epoch's progress, with the accelerate state loaded; errors naming what is missing or changed."""
    folder = out / RESUME_DIR
    meta = folder / "progress.json"
    if not meta.is_file():
        raise ValueError(f"--resume_from_checkpoint: no resumable state in {folder} (it is written after every epoch "
                         "with --save_each_epoch, and removed when a run finishes)")
    progress = json.loads(meta.read_text())
    changed = sorted(k for k in set(flags) | set(progress["flags"]) if flags.get(k) != progress["flags"].get(k))
    if changed:
        raise ValueError("--resume_from_checkpoint: the interrupted run had other flags: "
                         + ", ".join(f"--{k} {progress['flags'].get(k)!r} (now {flags.get(k)!r})" for k in changed))
    accelerator.load_state(str(folder))
    return progress


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((DataArguments, ModelArguments, PretrainArguments))
    dargs, margs, args = parser.parse_args_into_dataclasses(args=argv)
    if args.loss not in LOSSES:
        parser.error(f"--loss must be one of {LOSSES}")
    if not 1 <= margs.patch_size <= margs.image_size:  # (torch's conv error names neither flag)
        parser.error(f"--patch_size {margs.patch_size} must be between 1 and --image_size {margs.image_size}")
    for message in unused_flag_errors(margs, args):
        parser.error(message)
    refit_head = args.loss == "supcon" or margs.projection_head
    check_budget_flags(args, refit_head)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    accelerator = build_accelerator(  # multi-process (gloo) on CPU-only machines too
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=refit_head)],
    )
    out = check_output_dir(args.output_dir, create=accelerator.is_main_process)
    set_seed(args.seed)
    start = time.time()

    classes = [c.strip() for c in dargs.classes.split(",")] if dargs.classes else None
    with accelerator.main_process_first():
        data = load_image_dataset(dargs.dataset, classes=classes, shots_per_class=dargs.shots_per_class, seed=args.seed)
    train, test = data["train"], data["test"]
    for flag in ("max_train_samples", "max_eval_samples", "nc_samples"):
        check_sample_count(getattr(dargs, flag), f"--{flag}")
    if dargs.max_train_samples is not None and dargs.max_train_samples < len(train):
        train = train.shuffle(seed=args.seed).select(range(dargs.max_train_samples))
    if dargs.max_eval_samples is not None and dargs.max_eval_samples < len(test):
        # seeded and stratified, as in the fine-tuning recipes: a test/ folder is sorted by class, so its first N
        # images were one or two classes and the reported test accuracy theirs
        try:
            test = stratified_subset(test, dargs.max_eval_samples, seed=args.seed)
        except ValueError as e:
            raise ValueError(f"--max_eval_samples {dargs.max_eval_samples}: {e}") from e
    names = train.features["label"].names
    if len(names) < 2:  # (NC1 and the classifier need two classes; NCStats said only "K >= 2" after the data loaded)
        raise ValueError(f"--classes: pre-training needs at least 2 classes, got {names} from {dargs.dataset!r}")
    # a random --max_train_samples can miss a class:
    # say so by flag now, not as a NaN metric or an error at the first epoch
    for split, flag, ds in (("training", "--max_train_samples", train), ("test", "--max_eval_samples", test)):
        missing = sorted(set(range(len(names))) - set(np.unique(np.asarray(ds["label"])).tolist()))
        if missing:
            raise ValueError(f"{flag}: the {len(ds)} {split} images kept hold no image of class(es) "
                             f"{[names[i] for i in missing][:10]}: use a larger {flag}")
    model = build_model(margs, names)
    net = PretrainNet(model, margs, args.loss)

    views = 2 if args.loss == "supcon" and dargs.augment != "none" else 1
    aug_kw = dict(augment=dargs.augment, crop_scale=(dargs.crop_scale_min, 1.0))
    train_tf = build_transforms(model.config, train=True, views=views, **aug_kw)
    eval_tf = build_transforms(model.config, train=False)
    nc_idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[: dargs.nc_samples]
    nc_labels = np.asarray(train["label"])[nc_idx.numpy()]
    missing = sorted(set(range(len(names))) - set(np.unique(nc_labels).tolist()))
    if missing:  # (NCStats would say only "class(es) have no samples", at the first measurement)
        raise ValueError(f"--nc_samples: the {len(nc_labels)} random training images of the source-NC subset hold no "
                         f"image of class(es) {[names[i] for i in missing][:10]}: use a larger --nc_samples")
    nc_ds = train.select(sorted(nc_idx.tolist())).with_transform(eval_tf)
    loader_kw = dict(collate_fn=collate_fn, num_workers=dargs.num_workers)
    train_loader = DataLoader(train.with_transform(train_tf), batch_size=args.per_device_train_batch_size,
                              shuffle=True, drop_last=len(train) > args.per_device_train_batch_size, **loader_kw)
    test_loader = DataLoader(test.with_transform(eval_tf), batch_size=args.per_device_eval_batch_size, **loader_kw)
    head_loader = DataLoader(train.with_transform(eval_tf), batch_size=args.per_device_eval_batch_size, **loader_kw)

    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / args.gradient_accumulation_steps)
    total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    epochs = math.ceil(total / steps_per_epoch)
    decay = [p for n, p in net.named_parameters() if p.ndim >= 2 and "embeddings" not in n]
    no_decay = [p for n, p in net.named_parameters() if not (p.ndim >= 2 and "embeddings" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.learning_rate)
    # Accelerate steps a prepared scheduler num_processes times per optimizer step (it expects a schedule
    # counted in per-process batches), so the schedule is counted in those units: one pass of the cosine
    # over the `total` optimizer steps on any number of processes
    n = accelerator.num_processes
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(args.warmup_ratio * total) * n, total * n)
    net, optimizer, train_loader, test_loader, head_loader, scheduler = accelerator.prepare(
        net, optimizer, train_loader, test_loader, head_loader, scheduler
    )

    flags, first_epoch = run_flags(dargs, margs, args), 1
    if args.resume_from_checkpoint:
        progress = load_progress(accelerator, out, flags)
        history, losses, learning_rates, step = (progress[k] for k in ("history", "losses", "learning_rates", "step"))
        first_epoch = history[-1]["epoch"] + 1
        train_loader.set_epoch(history[-1]["epoch"])  # the next epoch's shuffle, as without the interruption
        start -= progress["wall_time_s"]
        accelerator.print(f"resumed after epoch {first_epoch - 1} (step {step}) from {out / RESUME_DIR}")
    else:
        history, losses, learning_rates, step = [], [], [], 0
        history.append({"epoch": 0, "step": 0, "nc": source_nc(accelerator, net, nc_ds, args.per_device_eval_batch_size)})
        accelerator.print(f"epoch 0: source NC1 {history[-1]['nc']['nc1']:.4f}")
    bar = tqdm(total=total, initial=step, desc="pretrain", disable=not accelerator.is_local_main_process)
    for epoch in range(first_epoch, epochs + 1):
        net.train()
        epoch_start = len(losses)
        for batch in train_loader:
            with accelerator.accumulate(net):
                loss = compute_loss(net, batch, args, model.config.num_labels)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                step += 1
                losses.append(accelerator.gather(loss.detach()).mean().item())
                learning_rates.append(scheduler.get_last_lr()[0])
                bar.update(1)
                if step % args.logging_steps == 0:
                    bar.set_postfix(loss=f"{sum(losses[-args.logging_steps:]) / args.logging_steps:.4f}")
                if step >= total:
                    break
        entry = {"epoch": epoch, "step": step, "train_loss": sum(losses[epoch_start:]) / max(1, len(losses) - epoch_start),
                 "nc": source_nc(accelerator, net, nc_ds, args.per_device_eval_batch_size)}
        if args.eval_each_epoch and not refit_head:
            entry["test_accuracy"] = evaluate(accelerator, net, test_loader)
        history.append(entry)
        accelerator.print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in
                          [("loss", entry["train_loss"]), ("source NC1", entry["nc"]["nc1"])] +
                          ([("test acc", entry["test_accuracy"])] if "test_accuracy" in entry else [])))
        if step >= total:
            break
        if args.save_each_epoch:
            save_progress(accelerator, out, flags, {"history": history, "losses": losses, "learning_rates": learning_rates,
                                                    "step": step, "wall_time_s": time.time() - start})
    bar.close()

    head_train_acc = fit_linear_head(accelerator, net, head_loader, args.head_fit_steps, args.seed) if refit_head else None
    test_acc = evaluate(accelerator, net, test_loader)
    accelerator.wait_for_everyone()
    import accelerate, datasets, transformers

    record = {
        "command": "python " + " ".join(shlex.quote(a) for a in ([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))),
        "args": {"data": asdict(dargs), "model": asdict(margs), "train": asdict(args)},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
                     "accelerate": accelerate.__version__, "datasets": datasets.__version__},
        "class_names": names, "num_train": len(train), "num_test": len(test), "num_nc_samples": len(nc_ds),
        "num_test_per_class": np.bincount(np.asarray(test["label"]), minlength=len(names)).tolist(),
        "num_processes": accelerator.num_processes, "steps": step, "losses": losses,
        "learning_rates": learning_rates, "history": history,
        "head_train_accuracy": head_train_acc, "test_accuracy": test_acc, "wall_time_s": time.time() - start,
    }
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)  # (made at the start; again in case it was removed meanwhile)
        backbone = accelerator.unwrap_model(net).backbone.float()
        backbone.save_pretrained(out)  # only the ViT: the projection head is not saved
        image_processor_for(backbone.config).save_pretrained(out)
        (out / "history.json").write_text(json.dumps(record, indent=1))
        write_card(out / "README.md", args.model_name or f"ViT pre-trained on {dargs.dataset}", record)
        shutil.rmtree(out / RESUME_DIR, ignore_errors=True)  # the run is saved whole: its resumable state is spent
    accelerator.print(f"done: {step} steps, test accuracy {test_acc:.4f}, source NC1 {history[-1]['nc']['nc1']:.4f}, "
                      f"{record['wall_time_s']:.0f} s -> {args.output_dir}")
    accelerator.wait_for_everyone()  # every rank leaves together, after the main process has written
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # an un-destroyed gloo group could hang a rank at exit (seen once under CI)
    return record


if __name__ == "__main__":
    main()
