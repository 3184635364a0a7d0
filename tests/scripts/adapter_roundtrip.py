"""Fresh-process half of the save/load round trip (run by tests/test_adapters_roundtrip.py).

Usage: python adapter_roundtrip.py CASES_DIR. CASES_DIR holds one adapter folder per case and
expected.pt ({case: {"model": name, "adapted": logits, "base": logits}}). Prints one JSON line.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

import hf_nc  # noqa: E402,F401  (registers the methods once hf_nc/__init__ imports hf_nc.adapters)
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING  # noqa: E402

registered_by_import_hf_nc = "HFNC_SCL" in PEFT_TYPE_TO_CONFIG_MAPPING
if not registered_by_import_hf_nc:
    import hf_nc.adapters  # noqa: E402,F401

from peft import PeftModel  # noqa: E402
from tiny_models import build_tiny_model, tiny_pixels  # noqa: E402

cases_dir = sys.argv[1]
expected = torch.load(os.path.join(cases_dir, "expected.pt"))
x = tiny_pixels()
result = {"registered_by_import_hf_nc": registered_by_import_hf_nc, "cases": {}}
for case, exp in expected.items():
    base = build_tiny_model(exp["model"])
    model = PeftModel.from_pretrained(base, os.path.join(cases_dir, case))
    with torch.no_grad():
        out = model(pixel_values=x)
        out = out.logits if getattr(out, "logits", None) is not None else out[0]
        with model.disable_adapter():
            off = model(pixel_values=x)
            off = off.logits if getattr(off, "logits", None) is not None else off[0]
    result["cases"][case] = {
        "adapted": (out - exp["adapted"]).abs().max().item(),
        "disabled": (off - exp["base"]).abs().max().item(),
    }
print(json.dumps(result))
