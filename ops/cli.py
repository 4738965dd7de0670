"""The `longtake` command: run the services, and submit and follow jobs over HTTP."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from api.client import ApiClientError, LongtakeClient
from ops.settings import Settings

FINAL = {"succeeded": 0, "failed": 1, "canceled": 3}
"""Exit codes of `watch` (and `submit --watch`) by final status; 2 is a usage error."""


# --------------------------------------------------------------------------- services


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from ops.server import build

    if "api_url" not in settings.model_fields_set:
        settings = settings.model_copy(update={"api_url": f"http://{args.host}:{args.port}"})
    process = build(settings, embedded=args.embedded, relay=not args.no_relay)
    if args.embedded:
        data = settings.data_dir.resolve()
        print(f"embedded mode: SQLite and files under {data}", file=sys.stderr)
        if not process.dispatching:
            print(
                "no job handler is configured (LONGTAKE_EMBEDDED_HANDLER): jobs are accepted "
                "and stay queued until a process that can render them runs",
                file=sys.stderr,
            )
    process.start()
    try:
        uvicorn.run(process.app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        process.stop()
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from worker import celery_app as ca

    app = ca.make_celery_app(settings.celery_config(), ca.TASK_MODULES)
    if not ca.has_render_task(app):
        print(
            f"no {ca.RENDER_TASK} task is installed in this build, so a worker would take wake-ups "
            "it cannot run; not starting",
            file=sys.stderr,
        )
        return 1
    from db.database import Database
    from worker import tasks
    from worker.lifecycle import Lifecycle

    # Built in the worker at its first job: database, storage and (lazily) the model.
    tasks.install(
        app,
        lambda: Lifecycle(
            settings.worker_config(), Database(settings.database_url), settings.make_storage()
        ),
    )
    # One thread runs the task (the model lives in this process, never forked); the main
    # thread keeps answering pings and handling signals while an hour-long render runs.
    app.worker_main(
        [
            "worker",
            f"--queues={ca.RENDER_QUEUE}",
            "--pool=threads",
            "--concurrency=1",
            f"--loglevel={args.log_level.upper()}",
            "--task-events",
            f"--hostname={args.name}",
        ]
    )
    return 0


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    from worker.provenance import main_verify

    return main_verify(args.video, args.manifest)


def cmd_relay(settings: Settings, args: argparse.Namespace) -> int:
    import signal
    import threading

    from db.database import Database
    from worker.celery_app import make_celery_app
    from worker.relay import CeleryDispatcher, OutboxRelay

    logging.basicConfig(level=args.log_level.upper())
    database = Database(settings.database_url)
    relay = OutboxRelay(
        database,
        # publishes by task name: no task modules, so the relay never imports the render stack
        CeleryDispatcher(make_celery_app(settings.celery_config(), task_modules=())),
        redispatch_after_s=settings.redispatch_after_s,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    relay.run(stop, poll_s=settings.relay_poll_s)
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from db import migrate

    if args.embedded:
        settings = settings.embedded()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    if args.revision.startswith("-") or args.down:
        migrate.downgrade(settings.database_url, args.revision)
    else:
        migrate.upgrade(settings.database_url, args.revision)
    print(f"database at revision {migrate.current_revision(settings.database_url)}")
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from ops.demo import run_demo

    return run_demo(settings, port=args.port)


# --------------------------------------------------------------------------- client


def _client(args: argparse.Namespace) -> LongtakeClient:
    return LongtakeClient(args.api_url)


def cmd_submit(settings: Settings, args: argparse.Namespace) -> int:
    for path in (args.image, args.audio):
        if not path.is_file():
            print(f"error: {path} is not a file", file=sys.stderr)
            return 2
    with _client(args) as client:
        job = client.submit(
            args.image,
            args.audio,
            idempotency_key=args.idempotency_key,
            prompt=args.prompt,
            size=args.size,
            num_clips=args.clips,
            infer_frames=args.infer_frames,
            sample_steps=args.steps,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            priority=args.priority,
        )
        print(job["id"])
        if args.watch:
            return watch(client, job["id"], interval=args.interval)
    return 0


def describe(job: dict[str, Any]) -> str:
    p = job["progress"]
    lines = [
        f"job       {job['id']}",
        f"status    {job['status']}" + (" (cancel requested)" if job["cancel_requested"] else ""),
        f"progress  {p['clips_done']}/{p['clips_total']} clips, "
        f"{p['frames_done']}/{p['frames_total']} frames",
        f"attempt   {job['attempt']} of {job['max_attempts']}",
        f"created   {job['created_at']}",
    ]
    if p["fps"]:
        lines.append(f"speed     {p['fps']:.1f} fps, eta {format_eta(p['eta_s'])}")
    if p["last_checkpoint_clip"] is not None:
        lines.append(f"checkpoint after clip {p['last_checkpoint_clip']}")
    if job["error"]:
        lines.append(f"error     {job['error']}")
    if job["output_key"]:
        lines.append(f"output    {job['output_key']}")
    return "\n".join(lines)


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get(args.job)
        events = client.events(args.job) if args.events else []
    print(json.dumps(job, indent=2) if args.json else describe(job))
    for e in events:
        change = f"{e['from_status'] or ''} -> {e['to_status']}" if e["to_status"] else ""
        print(f"{e['at']}  {e['event']:<16} {change:<22} {e['reason']}")
    return 0


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.list(status=args.status, limit=args.limit)
    for job in page["jobs"]:
        p = job["progress"]
        print(
            f"{job['id']}  {job['status']:<10} {p['clips_done']:>6}/{p['clips_total']:<6} {job['created_at']}"
        )
    return 0


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


def watch(
    client: LongtakeClient,
    job_id: str,
    *,
    interval: float = 1.0,
    out: TextIO | None = None,
    timeout: float | None = None,
) -> int:
    """A live progress bar until the job ends; the exit code says how it ended."""
    out = out or sys.stderr
    live = out.isatty()
    last = ""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = client.get(job_id)
        line = progress_line(job)
        if live:
            out.write("\r\033[K" + line)
        elif line != last:
            out.write(line + "\n")
        out.flush()
        last = line
        if job["status"] in FINAL:
            if live:
                out.write("\n")
            if job["error"]:
                out.write(f"error: {job['error']}\n")
            return FINAL[job["status"]]
        if deadline is not None and time.monotonic() > deadline:
            if live:
                out.write("\n")
            return 124
        time.sleep(interval)


def cmd_watch(settings: Settings, args: argparse.Namespace) -> int:
    with _client(args) as client:
        return watch(client, args.job, interval=args.interval)


def cmd_cancel(settings: Settings, args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel(args.job)
    if job["status"] == "canceled":
        print(f"job {job['id']} canceled")
    else:
        print(f"job {job['id']} is {job['status']}: it stops at the end of its current clip")
    return 0


def cmd_retry(settings: Settings, args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.retry(args.job)
    resume = job["progress"]["last_checkpoint_clip"] or 0
    print(f"job {job['id']} queued again; it resumes from clip {resume}")
    return 0


def cmd_fetch(settings: Settings, args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.result(args.job)
        dest = args.output or Path(f"{args.job}.mp4")
        size = client.download(result["url"], dest)
    print(f"{dest} ({size} bytes)")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longtake",
        description="Queued, resumable renders of long talking-avatar videos.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--api-url",
        default=settings.api_url,
        help="the API to talk to (LONGTAKE_API_URL; default %(default)s)",
    )

    def add(name: str, func: Any, help: str, api: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[client] if api else [])
        p.set_defaults(func=func)
        return p

    p = add("serve", cmd_serve, "run the HTTP API (and the outbox relay beside it)")
    p.add_argument(
        "--embedded",
        action="store_true",
        help="no services: SQLite and local files under LONGTAKE_DATA_DIR, jobs run in-process",
    )
    p.add_argument("--host", default=settings.host)
    p.add_argument("--port", type=int, default=settings.port)
    p.add_argument(
        "--no-relay", action="store_true", help="run the relay elsewhere (`longtake relay`)"
    )
    p.add_argument("--log-level", default="info")

    p = add("worker", cmd_worker, "run a render worker (Celery, queue `render`, one job at a time)")
    p.add_argument("--name", default="render@%h", help="worker node name (default %(default)s)")
    p.add_argument("--log-level", default="info")

    p = add(
        "verify",
        cmd_verify,
        "check that VIDEO is the rendered output its provenance MANIFEST describes",
    )
    p.add_argument("video", type=Path)
    p.add_argument("manifest", type=Path)

    p = add("relay", cmd_relay, "publish queued wake-ups to the broker and requeue lost jobs")
    p.add_argument("--log-level", default="info")

    p = add("migrate", cmd_migrate, "bring the database schema up to date (alembic upgrade)")
    p.add_argument("revision", nargs="?", default="head")
    p.add_argument("--down", action="store_true", help="downgrade to REVISION instead")
    p.add_argument("--embedded", action="store_true", help="the embedded SQLite database")

    p = add("demo", cmd_demo, "make demo inputs, start the embedded service, submit and watch")
    p.add_argument("--port", type=int, default=None, help="default: a free port")

    p = add(
        "submit", cmd_submit, "upload a portrait and a speech track; prints the job id", api=True
    )
    p.add_argument("image", type=Path)
    p.add_argument("audio", type=Path)
    p.add_argument("--prompt", required=True)
    p.add_argument("--size", default=None, help="area key such as 720*400")
    p.add_argument(
        "--clips", default=None, help="number of clips (default: to the end of the audio)"
    )
    p.add_argument("--infer-frames", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="sampling steps")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None, help="clips between checkpoints")
    p.add_argument("--priority", type=int, default=None)
    p.add_argument("--idempotency-key", default=None)
    p.add_argument("--watch", action="store_true", help="then watch it until it ends")
    p.add_argument("--interval", type=float, default=1.0)

    p = add("status", cmd_status, "show a job", api=True)
    p.add_argument("job")
    p.add_argument("--json", action="store_true")
    p.add_argument("--events", action="store_true", help="and its history")

    p = add("list", cmd_list, "list jobs, newest first", api=True)
    p.add_argument("--status", action="append", help="repeat to match several")
    p.add_argument("--limit", type=int, default=20)

    p = add("watch", cmd_watch, "a live progress bar until the job ends", api=True)
    p.add_argument("job")
    p.add_argument("--interval", type=float, default=1.0)

    p = add(
        "cancel", cmd_cancel, "cancel a job (a running one stops after its current clip)", api=True
    )
    p.add_argument("job")

    p = add(
        "retry",
        cmd_retry,
        "queue a failed or canceled job again, from its last checkpoint",
        api=True,
    )
    p.add_argument("job")

    p = add("fetch", cmd_fetch, "download the finished video", api=True)
    p.add_argument("job")
    p.add_argument("-o", "--output", type=Path, default=None, help="default: <job id>.mp4")
    return parser


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    args = build_parser(settings).parse_args(argv)
    try:
        return args.func(settings, args)
    except ApiClientError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
