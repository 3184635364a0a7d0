"""The test harness itself (tests/conftest.py): a multi-process launch that times out takes its
worker processes with it."""

import os
import subprocess
import sys
import time

import pytest

# a stand-in for torchrun: starts a "rank" that would run for a minute, writes its pid, then hangs
LAUNCHER = """
import subprocess, sys, time
rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(sys.argv[1], "w").write(str(rank.pid))
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead
        return f.read().split(")")[-1].split()[0] != "Z"


def test_a_timed_out_launch_kills_its_ranks_too(tmp_path):
    pid_file = tmp_path / "rank.pid"
    with pytest.raises(subprocess.TimeoutExpired):
        # the argument names torch.distributed.run, so the harness treats it as a multi-process launch
        subprocess.run([sys.executable, "-c", LAUNCHER, str(pid_file), "torch.distributed.run"], timeout=3, capture_output=True)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the launcher's worker outlived its timeout"
