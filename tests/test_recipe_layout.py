"""recipes/common.py is split into recipe_* modules: checkpoints of the one-file layout still load, names stay importable.

The Trainer pickles the training arguments into every checkpoint (``training_args.bin``, by
``torch.save``), which records the class by module and name: ``common.RecipeTrainingArguments``
before the split, ``recipe_args.RecipeTrainingArguments`` after it. Both must unpickle in a fresh
process that has only ``recipes/`` on its path (as a recipe resuming a run has).
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
sys.path.insert(0, str(RECIPES))
import common  # noqa: E402
import recipe_args  # noqa: E402

SAVE = """
import sys, torch
import common, finetune_vit, recipe_args
cls = recipe_args.RecipeTrainingArguments
cls.__module__ = "common"  # recorded where the one-file layout defined it (pickle checks common.RecipeTrainingArguments is cls)
torch.save(cls(output_dir="x", learning_rate=0.123, seed=7), sys.argv[1] + "/old.bin")
cls.__module__ = "recipe_args"
torch.save(cls(output_dir="x", learning_rate=0.123, seed=7), sys.argv[1] + "/new.bin")
torch.save(finetune_vit.ViTTrainingArguments(output_dir="y", learning_rate=0.5), sys.argv[1] + "/vit.bin")
"""

LOAD = """
import sys, torch
for name in ("old", "new", "vit"):
    a = torch.load(sys.argv[1] + f"/{name}.bin", weights_only=False)
    print(type(a).__name__, a.output_dir, a.learning_rate, a.seed)
"""


def _python(code: str, *args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(RECIPES))
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_training_args_of_old_and_new_checkpoints_unpickle_in_a_fresh_process(tmp_path):
    _python(SAVE, str(tmp_path))
    for layout, recorded, other in (("old", b"common", b"recipe_args"), ("new", b"recipe_args", b"common")):
        saved = (tmp_path / f"{layout}.bin").read_bytes()  # torch.save's zip stores the pickle uncompressed
        assert recorded in saved and other not in saved, layout
    assert _python(LOAD, str(tmp_path)).splitlines() == [
        "RecipeTrainingArguments x 0.123 7", "RecipeTrainingArguments x 0.123 7", "ViTTrainingArguments y 0.5 0"]


def test_common_still_offers_the_names_the_recipes_study_and_tests_use():
    used = ["RecipeTrainingArguments", "training_default", "load_classifier", "run", "ModelArguments", "DataArguments",
            "MethodArguments", "RecipeTrainer", "apply_method", "check_fsdp", "image_spec", "load_data", "parse", "plan_budget",
            "resolve_backbone", "DEFAULT_MIN_EPOCHS", "DEFAULT_LEARNING_RATES"]
    assert [n for n in used if not hasattr(common, n)] == []
    assert common.RecipeTrainingArguments is recipe_args.RecipeTrainingArguments
