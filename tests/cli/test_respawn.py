"""`longtake worker`'s parent (ops/respawn.py): a worker process that dies is replaced by a new
fork, a worker that ends on purpose is not, a stop reaches the worker, the worker dies with its
parent, and the parent's imports leave it forkable (one thread)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ops import respawn

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 60.0  # a bound on conditions, never a sleep

SCRIPT = """
import os, sys, threading
from ops import respawn

pids, mode = sys.argv[1], sys.argv[2]
first, most = (float(v) for v in sys.argv[3:5]) if len(sys.argv) > 3 else (0.05, 0.2)

def worker():
    with open(pids, "a") as f:
        f.write(f"{os.getpid()}\\n")
    if mode == "done":
        return 0
    if mode == "fail":
        return 3
    threading.Event().wait()  # until a signal ends it
    return 0

sys.exit(respawn.run(worker, respawn.Backoff(first=first, most=most, healthy_after=1000)))
"""


def start(tmp_path: Path, mode: str, *backoff: float, **popen) -> tuple[subprocess.Popen, Path]:
    """The parent running `mode`'s worker; `backoff`: its first and longest pause (s)."""
    pids = tmp_path / "pids"
    pids.touch()
    args = [sys.executable, "-c", SCRIPT, str(pids), mode, *map(str, backoff)]
    return subprocess.Popen(args, cwd=REPO, **popen), pids


def until(condition, what: str) -> None:
    """Wait for `condition()` to hold (checked on a short tick), at most WAIT_S."""
    tick = threading.Event()
    for _ in range(int(WAIT_S / 0.02)):
        if condition():
            return
        tick.wait(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def workers(pids: Path) -> list[int]:
    return [int(line) for line in pids.read_text().split()]


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def test_a_worker_that_dies_is_replaced_and_a_stop_reaches_the_next(tmp_path):
    proc, pids = start(tmp_path, "block")
    try:
        until(lambda: len(workers(pids)) == 1, "the first worker")
        first = workers(pids)[0]
        assert first != proc.pid
        os.kill(first, signal.SIGKILL)  # a crash of the worker alone
        until(lambda: len(workers(pids)) == 2, "a new worker")
        second = workers(pids)[1]
        assert second != first and alive(second)
        proc.send_signal(signal.SIGTERM)  # a deploy's stop: passed on to the worker
        assert proc.wait(WAIT_S) == 128 + signal.SIGTERM  # the worker's own end
        assert not alive(second)
        assert len(workers(pids)) == 2  # a stopped worker is not replaced
    finally:
        proc.kill()


def test_a_worker_that_ends_on_purpose_is_not_replaced(tmp_path):
    proc, pids = start(tmp_path, "done")
    assert proc.wait(WAIT_S) == 0
    assert len(workers(pids)) == 1


def test_killing_the_parent_stops_the_worker(tmp_path):
    proc, pids = start(tmp_path, "block")
    try:
        until(lambda: len(workers(pids)) == 1, "the worker")
        worker = workers(pids)[0]
        proc.kill()  # kill -9 of `longtake worker`: as before, nothing of it goes on
        proc.wait(WAIT_S)
        until(lambda: not alive(worker), "the worker to die with its parent")
    finally:
        proc.kill()


def test_a_failing_worker_is_replaced_after_pauses(tmp_path):
    proc, pids = start(tmp_path, "fail")
    try:
        until(lambda: len(workers(pids)) >= 3, "three workers")
    finally:
        proc.kill()


def test_a_stop_ends_the_pause_before_a_replacement(tmp_path):
    """A stop that comes while the parent waits to replace a dead worker ends the wait at once.
    (Sent when the parent says it is pausing: a stop that meets a worker which is ending with
    its own status anyway leaves with that status, as any stop of a running worker does.)"""
    proc, pids = start(tmp_path, "fail", 600, 600, stderr=subprocess.PIPE, text=True)
    said: list[str] = []
    err = proc.stderr
    assert err is not None

    def read() -> None:
        for line in err:
            said.append(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        until(lambda: any("a new one starts in" in line for line in said), "the pause")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT_S) == 128 + signal.SIGTERM  # long before the 600 s pause ends
        assert len(workers(pids)) == 1
    finally:
        proc.kill()


def test_the_pause_grows_while_workers_keep_dying_and_resets_after_a_healthy_one():
    backoff = respawn.Backoff(first=1.0, most=5.0, healthy_after=100.0)
    assert [backoff.after(3.0) for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.after(500.0) == 1.0  # it ran long enough: a fresh fault


def test_a_process_with_threads_runs_the_worker_itself():
    hold = threading.Event()
    other = threading.Thread(target=hold.wait)
    other.start()
    try:
        assert not respawn.can_fork()
        assert respawn.run(lambda: os.getpid()) == os.getpid()  # in this very process
    finally:
        hold.set()
        other.join()


@pytest.mark.slow
def test_the_parent_imports_the_worker_modules_and_stays_forkable():
    code = (
        "import sys, threading\n"
        "from ops import respawn\n"
        "respawn.preimport()\n"
        "print(threading.active_count(), all(m in sys.modules for m in respawn.PREIMPORTS))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", "True"]


def test_the_parent_asks_torch_to_check_for_cuda_without_initialising_it(monkeypatch):
    monkeypatch.delenv("PYTORCH_NVML_BASED_CUDA_CHECK", raising=False)
    respawn.prepare()
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"
    # no CUDA driver loaded in this process (a CPU machine): nothing stops the fork
    assert not respawn.cuda_driver_initialised()


def test_the_parent_computes_the_compilers_keys_for_its_workers(monkeypatch):
    """The hashes every compiled graph's cache key needs are computed once in the parent (a
    forked worker inherits them), without starting a thread: the parent stays forkable."""
    import torch._inductor.codecache as codecache

    called: list[str] = []
    for name in respawn.COMPILER_KEYS:
        monkeypatch.setattr(codecache, name, lambda name=name: called.append(name) or b"key")
    threads = set(threading.enumerate())
    respawn.prewarm()
    assert called == list(respawn.COMPILER_KEYS)
    assert set(threading.enumerate()) == threads  # no thread started: still safe to fork


def test_a_compiler_key_that_fails_is_left_for_the_worker(monkeypatch):
    import torch._inductor.codecache as codecache

    def broken() -> bytes:
        raise RuntimeError("no Triton here")

    called: list[str] = []
    monkeypatch.setattr(codecache, "torch_key", broken)
    monkeypatch.setattr(codecache, "triton_key", lambda: called.append("triton") or None)
    respawn.prewarm()  # does not raise, and goes on to the next key
    assert called == ["triton"]
