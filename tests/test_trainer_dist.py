"""NCTrainer on 2 gloo processes: metrics equal a 1-process run, also when a rank has no train images."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "scripts" / "trainer_dist.py"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{nproc: {mode: [metrics of rank 0, rank 1, ...]}} from one torchrun per world size."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = {}
    for nproc in (1, 2):
        out = tmp_path_factory.mktemp(f"nproc{nproc}")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               str(SCRIPT), str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-4000:]
        result[nproc] = {mode: [json.loads((out / f"{mode}-rank{r}.json").read_text()) for r in range(nproc)]
                         for mode in ("split", "empty")}
    return result


@pytest.mark.parametrize("mode", ["split", "empty"])
def test_two_processes_equal_one(runs, mode):
    (one,) = runs[1][mode]
    two = runs[2][mode]
    assert [r["world_size"] for r in two] == [2, 2]
    assert [r["shard"] for r in two] == ([9, 0] if mode == "empty" else [5, 4])  # "empty": rank 1 has no train image
    keys = [k for k in one if "nc" in k]
    assert "eval_train_subset_nc1" in keys and "eval_train_subset_ncc_acc" in keys and "eval_nc1_block2" in keys
    for rank in two:
        assert set(k for k in rank if "nc" in k) == set(keys)
        for k in keys:
            assert rank[k] == pytest.approx(one[k], rel=1e-9, abs=1e-12), k
