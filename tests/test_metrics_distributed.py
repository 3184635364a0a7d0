"""NCStats.all_reduce over two real CPU processes (gloo) equals one process."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_nc.metrics import nc_metrics

SCRIPT = Path(__file__).parent / "scripts" / "dist_nc_stats.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("dist_nc_stats", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_two_process_all_reduce_equals_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(SCRIPT), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    script = _load_script()
    h, y, W = script.make_data()
    want = nc_metrics(h, y, num_classes=script.K, classifier_weight=W)
    assert "ncc_acc" in want and "nc3" in want
    # the shares really are uneven and rank 1 lacks classes
    assert ranks[0]["local_samples"] != ranks[1]["local_samples"]
    assert ranks[1]["local_classes"] == [2, 3, 4, 5]
    for r in ranks:
        assert r["world_size"] == 2
        for name in ("result", "lone"):
            got = r[name]
            assert got.keys() == want.keys()
            for k, v in want.items():
                assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (r["rank"], name, k)
        hl, yl = script.make_layer_norm_data()
        assert r["lone_ln_nc1"] == pytest.approx(nc_metrics(hl, yl)["nc1"], rel=1e-9), r["rank"]
        got = r["lone_nodim"]
        for k, v in want.items():  # an empty rank without dim takes d from the others
            assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (r["rank"], "lone_nodim", k)
        # one-shot metrics of local tensors, inside the 2-process program (issue 9 item 5)
        hr, yr = script.shard(r["rank"], h, y)
        want_local = nc_metrics(hr, yr - yr.min())
        assert r["local"] == pytest.approx(want_local, rel=1e-12), r["rank"]
        assert r["evaluate"] == pytest.approx(nc_metrics(h, y), rel=1e-12), r["rank"]
        for k, v in want.items():  # distributed=True: the union of the ranks' shares
            assert r["union"][k] == pytest.approx(v, rel=1e-9, abs=1e-12), (r["rank"], "union", k)
        # disagreeing ranks: a ValueError naming both, no gloo reset (issue 9 item 22)
        e = r["errors"]
        assert "ranks disagree on (num_classes, dim)" in e["disagree_K"]
        assert "rank 0 has (6, 11)" in e["disagree_K"] and "rank 1 has (7, 11)" in e["disagree_K"]
        assert "rank 0 has (6, 11)" in e["disagree_d"] and "rank 1 has (6, 12)" in e["disagree_d"]
        assert "rank 1: features contain NaN or inf values (batch 1 given to update())" in e["nan_on_rank1"]
        assert "all_reduce() first" in r["errors"]["ncc_before_reduce"]
        assert "after all_reduce()" in r["errors"]["update_after_reduce"]
    # every rank reports identical numbers
    assert ranks[0]["result"] == ranks[1]["result"]
