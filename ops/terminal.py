"""What the `longtake` command and the demo show in a terminal: progress lines, a live watch
of one job or a batch, counted nouns, and how to name the command itself.

Shared by `ops/cli.py` and `ops/demo.py`; it imports neither (and nothing of the server).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from api.client import LongtakeClient

FINAL = {"succeeded": 0, "failed": 1, "canceled": 3}
"""Exit codes of `watch` (and `submit --watch`) by final status; 2 is a usage error."""
STATUS_ORDER = ("queued", "running", "stitching", "succeeded", "failed", "canceled")


def count(n: float, noun: str) -> str:
    """`1 clip`, `2 clips`, `0 clips`, `0.5 days`."""
    shown = f"{n:g}" if isinstance(n, float) and not n.is_integer() else f"{int(n)}"
    return f"{shown} {noun if n == 1 else noun + 's'}"


def own_command(argv0: str | None = None, path: str | None = None) -> str:
    """How the user can run `longtake` again, as they would type it: `longtake` when that
    name on their PATH is this very command, else the script's path (`.venv/bin/longtake`,
    as `make demo` runs it without activating the virtual environment), or `python -m ops.cli`
    when run as a module."""
    script = Path(argv0 if argv0 is not None else sys.argv[0])
    if script.name == "cli.py" and script.parent.name == "ops":
        return f"{_shortest(Path(sys.executable))} -m ops.cli"
    found = shutil.which("longtake", path=path)
    if script.name != "longtake" or (found and Path(found).resolve() == script.resolve()):
        return "longtake"
    return _shortest(script)


def _shortest(path: Path) -> str:
    """The path relative to the working directory when it lies below it, else absolute."""
    absolute = path.absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_line(job: dict[str, Any], width: int = 30) -> str:
    p = job["progress"]
    total = max(p["clips_total"], 1)
    filled = int(width * min(p["clips_done"], total) / total)
    bar = "#" * filled + "." * (width - filled)
    fps = f"{p['fps']:.1f} fps" if p["fps"] else "-- fps"
    status = job["status"] + (" (cancel requested)" if job["cancel_requested"] else "")
    return (
        f"[{bar}] {p['clips_done']}/{p['clips_total']} clips  {fps}  "
        f"eta {format_eta(p['eta_s'])}  {status}, attempt {job['attempt']}/{job['max_attempts']}"
    )


NOTES = {
    "checkpoint": lambda e: f"checkpoint saved after clip {e['data']['clip']}",
    "segment": lambda e: (
        f"segment {e['data']['index'] + 1} ready ({count(e['data']['clips'], 'clip')})"
    ),
    "lease_expired": lambda e: f"worker lost: {e['reason']}; the job resumes from its checkpoint",
    "released": lambda e: f"released by its worker: {e['reason']}",
    "retry_scheduled": lambda e: f"attempt failed: {e['reason']}",
}
"""Events worth a line of their own while watching."""


def watch(
    client: LongtakeClient,
    job_id: str,
    *,
    interval: float = 1.0,
    out: TextIO | None = None,
    timeout: float | None = None,
) -> int:
    """A live progress bar until the job ends, fed by the job's event stream (reconnecting
    after `interval` seconds if it drops); the exit code says how the job ended."""
    out = out or sys.stderr
    live = out.isatty()
    shown = {"line": ""}

    def show(job: dict[str, Any]) -> None:
        line = progress_line(job)
        if live:
            out.write("\r\033[K" + line)
        elif line != shown["line"]:
            out.write(line + "\n")
        out.flush()
        shown["line"] = line

    def note(text: str) -> None:
        out.write(("\r\033[K" if live else "") + text + "\n")
        if live and shown["line"]:
            out.write(shown["line"])
        out.flush()

    def finish(job: dict[str, Any]) -> int:
        if live:
            out.write("\n")
        if job["error"]:
            out.write(f"error: {job['error']}\n")
        return FINAL[job["status"]]

    job = client.get(job_id)
    show(job)
    if job["status"] in FINAL:
        return finish(job)
    try:
        for name, data in client.follow(job_id, timeout=timeout, reconnect_delay=interval):
            if name == "job":
                show(data)
                if data["status"] in FINAL:
                    return finish(data)
            elif name in NOTES:
                note(NOTES[name](data))
    except TimeoutError:
        if live:
            out.write("\n")
        return 124
    raise AssertionError("the event stream never ends")  # follow() reconnects forever


def batch_line(batch: dict[str, Any], width: int = 30) -> str:
    counts = batch["counts"]
    total = max(batch["jobs_total"], 1)
    ended = sum(counts.get(s, 0) for s in FINAL)
    filled = int(width * ended / total)
    bar = "#" * filled + "." * (width - filled)
    parts = [f"{counts[s]} {s}" for s in STATUS_ORDER if counts.get(s)]
    return (
        f"[{bar}] {ended}/{batch['jobs_total']} jobs done  "
        f"{batch['clips_done']}/{batch['clips_total']} clips  ({', '.join(parts)})"
    )


def watch_batch(
    client: LongtakeClient,
    batch_id: str,
    *,
    interval: float = 2.0,
    out: TextIO | None = None,
    timeout: float | None = None,
) -> int:
    """One progress line for the whole batch until every job has ended: exit 0 when all
    succeeded, 1 when any failed, 3 when any was canceled (and none failed)."""
    out = out or sys.stderr
    live = out.isatty()
    last = ""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        batch = client.batch(batch_id)
        line = batch_line(batch)
        if live:
            out.write("\r\033[K" + line)
        elif line != last:
            out.write(line + "\n")
        out.flush()
        last = line
        if batch["finished"]:
            if live:
                out.write("\n")
            counts = batch["counts"]
            return 1 if counts.get("failed") else 3 if counts.get("canceled") else 0
        if deadline is not None and time.monotonic() > deadline:
            if live:
                out.write("\n")
            return 124
        time.sleep(interval)


def quiet_closed_output() -> None:
    """Point stdout and stderr at /dev/null after the reader of a pipe went away (`longtake
    list | head -1`), so that nothing more is written to it, not even at interpreter exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # not a real file (a test's capture)
            os.dup2(devnull, stream.fileno())
    os.close(devnull)
