"""Test-wide settings: offline, deterministic, quiet."""

import os

# Set before transformers/huggingface_hub/datasets are imported anywhere in the tests:
# a missing local path must fail at once instead of retrying the Hub for ~20 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per process (also inherited by the subprocess tests): the tiny models of the tests
# are overhead-bound, and on a busy 2-core machine torch's default threads ran the same
# tests far slower (a doc example: 196 s with the default threads, 10 s with one).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
