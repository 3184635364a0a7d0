#!/usr/bin/env python
"""Renders the shipped checkpoint's model card from its template and recorded numbers; never edit it by hand.

    python model_cards/build_cards.py           # writes both copies
    python model_cards/build_cards.py --check   # exits 1 when a copy differs from what would be written

The card of ``hf_nc/checkpoints/hf-nc-tiny-vit-fmnist`` comes from ``templates/hf-nc-tiny-vit-fmnist.md``
(Jinja, rendered by ``hf_nc.cards.pretrained_card`` through ``huggingface_hub.ModelCard.from_template``),
the checkpoint's ``history.json`` (written by ``recipes/pretrain_vit.py``) and the linear-probe results in
``results/hf-nc-tiny-vit-fmnist.probe.json``. It is written to the checkpoint folder (``README.md``) and to
``model_cards/hf-nc-tiny-vit-fmnist.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from huggingface_hub import ModelCard

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NAME = "hf-nc-tiny-vit-fmnist"
CHECKPOINT = ROOT / "hf_nc" / "checkpoints" / NAME
TARGETS = (CHECKPOINT / "README.md", HERE / f"{NAME}.md")


def render_tiny_vit_card() -> ModelCard:
    """The shipped checkpoint's card, rendered from the template, ``history.json`` and the probe results."""
    sys.path.insert(0, str(ROOT))
    from hf_nc.cards import BUILTIN_MODEL_NAME, pretrained_card

    record = json.loads((CHECKPOINT / "history.json").read_text())
    probe = json.loads((HERE / "results" / f"{NAME}.probe.json").read_text())
    full = probe["full"]["rows"]
    ours, random = full[0]["test_accuracy"], [r["test_accuracy"] for r in full[1:]]
    shot = probe["ten_shot"]
    shot_random = list(shot["random_init"].values())
    return pretrained_card(
        record, NAME, template=HERE / "templates" / f"{NAME}.md", license="apache-2.0",
        builtin_name=BUILTIN_MODEL_NAME, probe=probe,
        full_gain_min=ours - max(random), full_gain_max=ours - min(random), full_gain_seed0=ours - random[0],
        shot_random=" / ".join(f"{v:.4f}" for v in shot_random),
        shot_gain_min=shot["pretrained"] - max(shot_random), shot_gain_max=shot["pretrained"] - min(shot_random),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    content = render_tiny_vit_card().content
    stale = [p for p in TARGETS if not p.is_file() or p.read_text(encoding="utf-8") != content]
    if args.check:
        for p in stale:
            print(f"stale: {p} (run python model_cards/build_cards.py)")
        return 1 if stale else 0
    for p in TARGETS:
        p.write_text(content, encoding="utf-8")
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
