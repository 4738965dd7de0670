"""Commands run as processes of their own, and waiting for what they say or serve.

A test waits for a condition (a line in the log, an answer over HTTP), never for a time; the
deadline only bounds a failure, and is long enough for a busy 2-core machine.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable

DEADLINE_S = 120.0


def wait_until(
    condition: Callable[[], bool],
    what: str,
    *,
    alive: Callable[[], bool] = lambda: True,
    timeout: float = DEADLINE_S,
) -> None:
    """Poll `condition` until it holds; fail if `alive()` turns false or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if not alive():
            raise AssertionError(f"the process ended before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.05)


class LoggedProcess:
    """A command whose stderr is read line by line as it comes (so that the pipe never fills
    and blocks it), so that a test can wait for what it says."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._ended = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_for(
        self, seen: Callable[[list[str]], bool], what: str, timeout: float = DEADLINE_S
    ) -> None:
        """Until `seen(lines so far)` holds; fails if the process ends first."""
        with self._changed:
            self._changed.wait_for(lambda: seen(self.lines) or self._ended, timeout)
            if not seen(self.lines):
                ended = "the process ended" if self._ended else f"not within {timeout:.0f} s"
                tail = "\n".join(self.lines[-40:])
                raise AssertionError(f"no {what} ({ended}); its log ends:\n{tail}")

    def stop(self, timeout: float = DEADLINE_S) -> int:
        """SIGTERM, then its exit code once it and its log have ended."""
        if self.alive():
            self.process.terminate()
        try:
            code = self.process.wait(timeout)
        finally:
            if self.alive():
                self.process.kill()
                self.process.wait()
            self._reader.join()
        return code

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)


def said(lines: list[str], start: str) -> int:
    """How many of a server's log messages (JSON lines) begin with `start`."""
    messages = [json.loads(line)["message"] for line in lines if line.startswith("{")]
    return sum(m.startswith(start) for m in messages)
