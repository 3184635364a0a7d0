"""NCTrainer.evaluate() on 1 or 2 processes, run by tests/test_trainer_dist.py.

    torchrun --standalone --nproc_per_node 2 tests/scripts/trainer_dist.py OUTDIR

Two trainers, one after the other: ``split`` shards the 9-image train subset as usual (5 and 4
images); ``empty`` gives rank 0 the whole subset and rank 1 none (as when nc_train_samples is
below the world size), so rank 1 joins every collective with empty statistics. The eval set
(9 images, batches of 4) makes Accelerate pad the last round: rank 1 gets no real row. Each rank writes
OUTDIR/{mode}-rank{r}.json with the metrics evaluate() returned.
"""

import json
import os
import sys

os.environ.setdefault("ACCELERATE_USE_CPU", "true")  # gloo, one rank per process, on a CPU-only machine

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # tests/: tiny_training

import torch  # noqa: E402
import transformers as tf  # noqa: E402
from tiny_training import SIDE, collate  # noqa: E402
from tiny_training import pattern_dataset as dataset  # noqa: E402

from hf_nc.trainer import NCTrainer  # noqa: E402


class EmptyRankTrainer(NCTrainer):
    def get_nc_train_dataloader(self):
        shard = self.nc_train_indices() if self.args.process_index == 0 else []
        return torch.utils.data.DataLoader(torch.utils.data.Subset(self.nc_train_dataset, shard), batch_size=4,
                                           collate_fn=self.data_collator)


def main(outdir):
    for mode in ("split", "empty"):
        torch.manual_seed(0)
        config = tf.ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                              image_size=SIDE, patch_size=8, num_labels=3)
        model = tf.ViTForImageClassification(config).eval()
        args = tf.TrainingArguments(output_dir=outdir, per_device_eval_batch_size=4, remove_unused_columns=False,
                                    report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no", seed=0)
        cls = EmptyRankTrainer if mode == "empty" else NCTrainer
        trainer = cls(model=model, args=args, train_dataset=dataset([5, 7, 6], 0), eval_dataset=dataset([3, 3, 3], 1),
                      data_collator=collate, nc_train_samples=9, nc_layers=True, nc_ncc=True, nc_plots=False)
        metrics = trainer.evaluate()
        metrics = {k: v for k, v in metrics.items() if "nc" in k or k == "eval_loss"}
        metrics["world_size"] = trainer.args.world_size
        metrics["shard"] = len(trainer.get_nc_train_dataloader().dataset)
        with open(os.path.join(outdir, f"{mode}-rank{trainer.args.process_index}.json"), "w") as f:
            json.dump(metrics, f)


if __name__ == "__main__":
    main(sys.argv[1])
