"""Test-wide settings: offline, deterministic, quiet; safe under pytest-xdist workers."""

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
# Each pytest-xdist worker imports this file too, so every worker runs on one thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import signal  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Commands that start several worker processes of their own (2 gloo ranks in the tests).
_MULTI_PROCESS_LAUNCHERS = ("torch.distributed.run", "accelerate.commands.launch")


def _is_multi_process_launch(args) -> bool:
    if isinstance(args, (str, bytes, os.PathLike)):
        args = [args]
    return any(str(a) in _MULTI_PROCESS_LAUNCHERS or str(a).startswith("torchrun") for a in args)


def run_in_own_process_group(*popenargs, timeout=None, check=False, input=None, capture_output=False, **kwargs):
    """``subprocess.run`` for a launcher of worker processes: on a timeout (or Ctrl-C) the whole
    process group is killed, not just the launcher; ``subprocess.run`` kills only its child, and a
    torchrun rank left waiting on its dead peer kept a core busy for the rest of the suite. Any
    process of the group still alive once the launcher has exited is killed too."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with subprocess.Popen(*popenargs, start_new_session=True, **kwargs) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except BaseException:
            _kill_group(proc.pid)
            proc.communicate()
            raise
        finally:
            _kill_group(proc.pid)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        done.check_returncode()
    return done


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # nothing left in the group
        pass


@pytest.fixture(autouse=True, scope="session")
def _one_multi_process_launch_at_a_time(tmp_path_factory: pytest.TempPathFactory):
    """Every torchrun/accelerate launch runs in its own process group (killed whole on a timeout:
    :func:`run_in_own_process_group`); under pytest-xdist (`make test` runs 2 workers), one at a time.

    Each launch starts 2 ranks that already fill a 2-core machine; two launches at once (4 ranks
    beside the other worker) would double their time towards the tests' subprocess timeouts. A
    file lock shared by the workers of this run serialises just those ``subprocess.run`` calls;
    the other worker waits for the lock instead of competing for the cores. Session-scoped, so it
    also covers module fixtures that launch (tests/test_trainer_dist.py).
    """
    from contextlib import nullcontext

    lock = nullcontext()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        from filelock import FileLock  # a dependency of huggingface_hub and datasets

        # each worker's basetemp is <the run's basetemp>/<worker id>: the parent is shared by this run only
        lock = FileLock(str(tmp_path_factory.getbasetemp().parent / "multi_process_launch.lock"))
    original = subprocess.run

    def run(*popenargs, **kwargs):
        args = popenargs[0] if popenargs else kwargs.get("args", ())
        if not _is_multi_process_launch(args):
            return original(*popenargs, **kwargs)
        with lock:
            return run_in_own_process_group(*popenargs, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "run", run)
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
