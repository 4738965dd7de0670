"""The `longtake` command: run the services, and submit and follow jobs over HTTP."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from api.client import ApiClientError, LongtakeClient
from api.logs import configure as configure_logging
from ops.settings import Settings

FINAL = {"succeeded": 0, "failed": 1, "canceled": 3}
"""Exit codes of `watch` (and `submit --watch`) by final status; 2 is a usage error."""
LOOPBACK = ("127.0.0.1", "::1", "localhost")


# --------------------------------------------------------------------------- services


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from ops.server import build

    if "api_url" not in settings.model_fields_set:
        settings = settings.model_copy(update={"api_url": f"http://{args.host}:{args.port}"})
    if settings.auth == "off" and args.host not in LOOPBACK:
        print(
            f"LONGTAKE_AUTH=off is allowed on a loopback address only, not {args.host}",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings.log_format, args.log_level)
    if args.workers > 1:
        return _serve_workers(settings, args)
    process = build(settings, embedded=args.embedded, relay=not args.no_relay)
    if process.api_key_file is not None:
        print(f"API key of tenant {settings.tenant}: {process.api_key_file}", file=sys.stderr)
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
        uvicorn.run(
            process.app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,  # longtake.access logs every request, with tenant and job ids
            log_config=None,
        )
    finally:
        process.stop()
    return 0


def _serve_workers(settings: Settings, args: argparse.Namespace) -> int:
    """Several API processes on one socket (uvicorn's workers), each built from settings."""
    import os

    import uvicorn

    if args.embedded:
        print("embedded mode runs in one process: drop --workers", file=sys.stderr)
        return 2
    # the worker processes read their settings from the environment, like this one
    os.environ["LONGTAKE_API_URL"] = settings.api_url
    os.environ["LONGTAKE_SERVE_RELAY"] = "false" if args.no_relay else "true"
    uvicorn.run(
        "ops.server:app_from_settings",
        factory=True,
        workers=args.workers,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        log_config=None,
    )
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from dispatch import celery_app as ca

    app = ca.make_celery_app(settings.celery_config(), ca.TASK_MODULES)
    if not ca.has_render_task(app):
        print(
            f"no {ca.RENDER_TASK} task is installed in this build, so a worker would take wake-ups "
            "it cannot run; not starting",
            file=sys.stderr,
        )
        return 1
    from db.database import Database
    from dispatch import tasks
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


def cmd_checkpoints_verify(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.weights import verify

    report = verify(args.root or settings.model_dir)
    print(report)
    return 0 if report.ok else 1


def cmd_checkpoints_download(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.weights import CheckpointError, download

    try:
        report = download(args.root or settings.model_dir, endpoint=args.endpoint)
    except CheckpointError as exc:
        print(f"longtake checkpoints download: {exc}", file=sys.stderr)
        return 1
    print(report)
    return 0 if report.ok else 1


def cmd_relay(settings: Settings, args: argparse.Namespace) -> int:
    import signal
    import threading

    from db.database import Database
    from dispatch.celery_app import make_celery_app
    from dispatch.relay import CeleryDispatcher, OutboxRelay
    from dispatch.webhooks import WebhookDeliverer

    configure_logging(settings.log_format, args.log_level)
    database = Database(settings.database_url)
    relay = OutboxRelay(
        database,
        # publishes by task name: no task modules, so the relay never imports the render stack
        CeleryDispatcher(make_celery_app(settings.celery_config(), task_modules=())),
        redispatch_after_s=settings.redispatch_after_s,
        sweeper=settings.make_sweeper(database, settings.make_storage()),
        reconciler=settings.make_reconciler(database, settings.make_storage()),
    )
    deliverer = WebhookDeliverer(database, settings.delivery_config())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    webhooks = threading.Thread(target=deliverer.run, args=(stop,), name="longtake-webhooks")
    webhooks.start()
    try:
        relay.run(stop, poll_s=settings.relay_poll_s)
    finally:
        stop.set()
        webhooks.join()
        deliverer.close()
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


def cmd_sweep(settings: Settings, args: argparse.Namespace) -> int:
    from db.database import Database
    from dispatch.sweep import ResumePointSweeper

    if args.embedded:
        settings = settings.embedded()
    days = settings.resume_retention_days if args.older_than_days is None else args.older_than_days
    if days <= 0:
        print("longtake sweep: nothing to do (resume points are kept: retention 0)")
        return 0
    database = Database(settings.database_url)
    try:
        sweeper = ResumePointSweeper(database, settings.make_storage(), retention_s=days * 86400)
        result = sweeper.run_once()
    finally:
        database.dispose()
    for job_id in result.dropped:
        print(f"dropped the resume point of job {job_id}")
    for job_id in result.failed:
        print(f"could not drop the resume point of job {job_id} (see the log)", file=sys.stderr)
    print(
        f"{len(result.dropped)} jobs, {result.objects_deleted} objects deleted "
        f"(failed or canceled more than {days:g} days ago)"
    )
    return 1 if result.failed else 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from ops.demo import run_demo

    return run_demo(settings, port=args.port)


# --------------------------------------------------------------------------- client


def api_key_of(settings: Settings, args: argparse.Namespace) -> str | None:
    """--api-key, else LONGTAKE_API_KEY, else embedded mode's key file if there is one."""
    if args.api_key:
        return args.api_key
    path = settings.api_key_file
    return path.read_text().strip() if path.is_file() else None


def _client(args: argparse.Namespace) -> LongtakeClient:
    return LongtakeClient(args.api_url, api_key=args.resolved_api_key)


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


NOTES = {
    "checkpoint": lambda e: f"checkpoint saved after clip {e['data']['clip']}",
    "segment": lambda e: f"segment {e['data']['index']} ready ({e['data']['clips']} clips)",
    "lease_expired": lambda e: f"worker lost: {e['reason']}; the job resumes from its checkpoint",
    "released": lambda e: f"released by its worker: {e['reason']}",
    "retry_scheduled": lambda e: f"attempt failed: {e['reason']}",
}
"""Events worth a line of their own while watching."""


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


# --------------------------------------------------------------------------- keys and tenants


def _database(settings: Settings, args: argparse.Namespace):
    from db.database import Database

    return Database((settings.embedded() if args.embedded else settings).database_url)


def cmd_keys_create(settings: Settings, args: argparse.Namespace) -> int:
    from db import tenants

    database = _database(settings, args)
    try:
        with database.transaction() as s:
            new = tenants.create_key(
                s, args.tenant, name=args.name or "", rate_limit_per_s=args.rate
            )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        database.dispose()
    print(new.token)
    print(
        f"created {new.key.id} for tenant {args.tenant}; the key above is shown only once",
        file=sys.stderr,
    )
    return 0


def cmd_keys_list(settings: Settings, args: argparse.Namespace) -> int:
    from db import tenants

    database = _database(settings, args)
    try:
        with database.transaction() as s:
            keys = tenants.list_keys(s, tenant=args.tenant)
    finally:
        database.dispose()
    for key in keys:
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        used = f"{key.last_used_at:%Y-%m-%d %H:%M}" if key.last_used_at else "never"
        rate = "default" if key.rate_limit_per_s is None else f"{key.rate_limit_per_s:g}/s"
        print(f"{key.id}  {key.tenant:<20} {state:<24} used {used:<16} rate {rate:<8} {key.name}")
    return 0


def cmd_keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from db import tenants

    database = _database(settings, args)
    try:
        with database.transaction() as s:
            key = tenants.revoke_key(s, args.key_id)
    finally:
        database.dispose()
    if key is None:
        print(f"error: no key {args.key_id}", file=sys.stderr)
        return 1
    print(f"{key.id} of tenant {key.tenant} revoked")
    return 0


def cmd_tenants_list(settings: Settings, args: argparse.Namespace) -> int:
    from db import tenants

    database = _database(settings, args)
    try:
        with database.transaction() as s:
            rows = [(t, tenants.count_unfinished(s, t.name)) for t in tenants.list_tenants(s)]
    finally:
        database.dispose()
    for t, unfinished in rows:
        limits = ", ".join(
            f"{f}={getattr(t, f)}" for f in tenants.LIMIT_FIELDS if getattr(t, f) is not None
        )
        print(f"{t.name:<24} {unfinished:>7} unfinished  {limits or 'default limits'}")
    return 0


def cmd_tenants_set(settings: Settings, args: argparse.Namespace) -> int:
    from api.config import MiB
    from db import tenants

    changes: dict[str, float | None] = {}
    if args.max_queued_jobs is not None:
        changes["max_queued_jobs"] = args.max_queued_jobs
    if args.max_image_mb is not None:
        changes["max_image_bytes"] = args.max_image_mb * MiB
    if args.max_audio_mb is not None:
        changes["max_audio_bytes"] = args.max_audio_mb * MiB
    if args.max_audio_seconds is not None:
        changes["max_audio_seconds"] = args.max_audio_seconds
    for name in args.reset or []:
        changes[name] = None
    database = _database(settings, args)
    try:
        with database.transaction() as s:
            tenants.set_limits(s, args.tenant, changes)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        database.dispose()
    print(f"tenant {args.tenant} updated")
    return 0


# --------------------------------------------------------------------------- batches


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


STATUS_ORDER = ("queued", "running", "stitching", "succeeded", "failed", "canceled")


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


def cmd_batch_submit(settings: Settings, args: argparse.Namespace) -> int:
    from ops.manifest import ManifestError, batch_key, read_jobs, upload_local_files

    try:
        jobs = read_jobs(args.source, image=args.image, prompt=args.prompt)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    defaults = {
        k: v
        for k, v in {
            "size": args.size,
            "priority": args.priority,
            "checkpoint_every": args.checkpoint_every,
            "webhook_url": args.webhook,
        }.items()
        if v is not None
    }
    with _client(args) as client:
        try:
            uploaded = upload_local_files(jobs, client.upload)
        except ManifestError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        body = {"name": args.name or args.source.name, "defaults": defaults, "jobs": jobs}
        batch = client.create_batch(body, idempotency_key=batch_key(body))
        print(batch["id"])
        print(
            f"batch {batch['id']}: {batch['jobs_total']} jobs queued "
            f"({len(uploaded)} files uploaded)",
            file=sys.stderr,
        )
        if args.wait:
            return watch_batch(client, batch["id"], interval=args.interval)
    return 0


def cmd_batch_status(settings: Settings, args: argparse.Namespace) -> int:
    with _client(args) as client:
        batch = client.batch(args.batch)
    print(json.dumps(batch, indent=2) if args.json else batch_line(batch))
    return 0


def cmd_batch_watch(settings: Settings, args: argparse.Namespace) -> int:
    with _client(args) as client:
        return watch_batch(client, args.batch, interval=args.interval)


def cmd_batch_cancel(settings: Settings, args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.cancel_batch(args.batch)
    print(f"batch {args.batch}: {result['canceled']} jobs canceled or stopping")
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
    client.add_argument(
        "--api-key",
        default=settings.api_key,
        help="the API key (LONGTAKE_API_KEY; default: embedded mode's key file)",
    )
    direct = argparse.ArgumentParser(add_help=False)
    direct.add_argument(
        "--embedded", action="store_true", help="the embedded SQLite database under the data dir"
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
        "--no-relay",
        action="store_true",
        default=not settings.serve_relay,
        help="run the relay elsewhere (`longtake relay`)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=settings.api_workers,
        help="API processes (LONGTAKE_API_WORKERS; default %(default)s)",
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

    ckpt = sub.add_parser("checkpoints", help="the released model weights under LONGTAKE_MODEL_DIR")
    ckpt_sub = ckpt.add_subparsers(dest="checkpoints_command", required=True, metavar="ACTION")
    p = ckpt_sub.add_parser(
        "verify", help="check presence, shapes and dtypes; say exactly what is missing or wrong"
    )
    p.add_argument("--root", type=Path, help="default: LONGTAKE_MODEL_DIR (%(default)s)")
    p.set_defaults(func=cmd_checkpoints_verify)
    p = ckpt_sub.add_parser(
        "download", help="fetch the release with huggingface_hub (needs internet; then verify)"
    )
    p.add_argument("--root", type=Path, help="default: LONGTAKE_MODEL_DIR")
    p.add_argument("--endpoint", help="a Hugging Face mirror (default: HF_ENDPOINT or the hub)")
    p.set_defaults(func=cmd_checkpoints_download)

    p = add("relay", cmd_relay, "publish queued wake-ups to the broker and requeue lost jobs")
    p.add_argument("--log-level", default="info")

    p = add(
        "sweep",
        cmd_sweep,
        "delete the checkpoints and segments of jobs that failed or were canceled long ago "
        "(the relay does this hourly)",
    )
    p.add_argument(
        "--older-than-days",
        type=float,
        default=None,
        help=f"default: LONGTAKE_RESUME_RETENTION_DAYS ({settings.resume_retention_days:g})",
    )
    p.add_argument("--embedded", action="store_true", help="the embedded database and files")

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

    # API keys and tenants: operator commands on the database itself
    keys = sub.add_parser("keys", help="create, list and revoke API keys (on the database)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = keys_sub.add_parser("create", parents=[direct], help="a new key; printed once")
    p.set_defaults(func=cmd_keys_create)
    p.add_argument("--tenant", required=True)
    p.add_argument("--name", help="what the key is for")
    p.add_argument("--rate", type=float, default=None, help="requests per second (0: unlimited)")
    p = keys_sub.add_parser("list", parents=[direct], help="keys, with state and last use")
    p.set_defaults(func=cmd_keys_list)
    p.add_argument("--tenant")
    p = keys_sub.add_parser("revoke", parents=[direct], help="a revoked key stops working")
    p.set_defaults(func=cmd_keys_revoke)
    p.add_argument("key_id", help="key_<id>, as `keys list` shows")

    tenants = sub.add_parser("tenants", help="tenants and their limits (on the database)")
    tenants_sub = tenants.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    p = tenants_sub.add_parser("list", parents=[direct], help="tenants, unfinished jobs, limits")
    p.set_defaults(func=cmd_tenants_list)
    p = tenants_sub.add_parser("set", parents=[direct], help="set a tenant's own limits")
    p.set_defaults(func=cmd_tenants_set)
    p.add_argument("tenant")
    p.add_argument("--max-queued-jobs", type=int, help="unfinished jobs at once")
    p.add_argument("--max-image-mb", type=int)
    p.add_argument("--max-audio-mb", type=int)
    p.add_argument("--max-audio-seconds", type=float)
    p.add_argument(
        "--reset",
        action="append",
        choices=["max_queued_jobs", "max_image_bytes", "max_audio_bytes", "max_audio_seconds"],
        help="back to the server default (repeat for several)",
    )

    batch = sub.add_parser("batch", help="submit and follow many jobs at once")
    batch_sub = batch.add_subparsers(dest="batch_command", required=True, metavar="ACTION")
    p = batch_sub.add_parser(
        "submit",
        parents=[client],
        help="a folder of speech tracks, or a CSV/JSONL manifest; prints the batch id",
    )
    p.set_defaults(func=cmd_batch_submit)
    p.add_argument("source", type=Path, help="a folder, or a .csv / .jsonl manifest")
    p.add_argument("--image", type=Path, help="the portrait of jobs that name none")
    p.add_argument("--prompt", help="the prompt of jobs that have none")
    p.add_argument("--size", help="area key such as 720*400, for every job")
    p.add_argument("--priority", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--webhook", help="POST every job's events to this URL")
    p.add_argument("--name", help="a label (default: the folder or manifest name)")
    p.add_argument("--wait", action="store_true", help="then follow it until every job ends")
    p.add_argument("--interval", type=float, default=2.0)
    p = batch_sub.add_parser("status", parents=[client], help="a batch's jobs by status")
    p.set_defaults(func=cmd_batch_status)
    p.add_argument("batch")
    p.add_argument("--json", action="store_true")
    p = batch_sub.add_parser("watch", parents=[client], help="one progress line until it ends")
    p.set_defaults(func=cmd_batch_watch)
    p.add_argument("batch")
    p.add_argument("--interval", type=float, default=2.0)
    p = batch_sub.add_parser("cancel", parents=[client], help="cancel every unfinished job")
    p.set_defaults(func=cmd_batch_cancel)
    p.add_argument("batch")
    return parser


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    args = build_parser(settings).parse_args(argv)
    if hasattr(args, "api_url"):
        args.resolved_api_key = api_key_of(settings, args)
    try:
        return args.func(settings, args)
    except ApiClientError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
