"""The `longtake` command: run the services, and submit and follow jobs over HTTP.

Every command imports what it needs when it runs: a client command (`status`, `list`, ...)
loads only the HTTP client, so that it starts at once; the server stack, Celery, boto3 and
torch are imported by the commands that run them.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ops.settings import Settings
from ops.terminal import (
    STATUS_ORDER,
    batch_line,
    count,
    format_eta,
    quiet_closed_output,
    watch,
    watch_batch,
)

if TYPE_CHECKING:
    from api.client import LongtakeClient

LOOPBACK = ("127.0.0.1", "::1", "localhost")


# --------------------------------------------------------------------------- services


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from api.logs import configure as configure_logging
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
    if not settings.worker_respawn:
        return _worker(settings, args, app)
    from ops import respawn

    # the worker is a fork of this process, which imports what it needs once: a worker that
    # dies is replaced by a new fork that starts loading its model at once
    seconds = respawn.preimport()
    print(f"longtake worker: modules imported in {seconds:.1f} s", file=sys.stderr, flush=True)
    return respawn.run(lambda: _worker(settings, args, app))


def _worker(settings: Settings, args: argparse.Namespace, app: Any) -> int:
    from dispatch import tasks
    from worker import engine
    from worker.lifecycle import Lifecycle

    # Built in the worker at its first job: database and storage; the model from the start
    # (unless preloading is off), beside Celery's own start and the first claim.
    config = settings.worker_config()
    if config.preload:
        engine.preload(config.engine_for(config.precisions[0]))
    tasks.install(
        app,
        lambda: Lifecycle(config, settings.make_database(), settings.make_storage()),
    )
    # One thread runs the task (the model lives in this process, forked before any of it
    # loaded); the main thread keeps answering pings and handling signals while an hour-long
    # render runs.
    app.worker_main(
        [
            "worker",
            f"--queues={','.join(config.capabilities.topics())}",
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

    from api.logs import configure as configure_logging
    from dispatch.celery_app import make_celery_app
    from dispatch.relay import CeleryDispatcher, OutboxRelay
    from dispatch.webhooks import WebhookDeliverer

    configure_logging(settings.log_format, args.log_level)
    database = settings.make_database()
    relay = OutboxRelay(
        database,
        # publishes by task name: no task modules, so the relay never imports the render stack
        CeleryDispatcher(make_celery_app(settings.celery_config(), task_modules=())),
        redispatch_after_s=settings.redispatch_after_s,
        sweeper=settings.make_sweeper(database, settings.make_storage()),
        reconciler=settings.make_reconciler(database, settings.make_storage()),
        prefer_local_s=settings.prefer_local_s,
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
    from dispatch.sweep import ResumePointSweeper

    if args.embedded:
        settings = settings.embedded()
    days = settings.resume_retention_days if args.older_than_days is None else args.older_than_days
    if days <= 0:
        print("longtake sweep: nothing to do (resume points are kept: retention 0)")
        return 0
    database = settings.make_database()
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
        f"{count(len(result.dropped), 'job')}, {count(result.objects_deleted, 'object')} deleted "
        f"(failed or canceled more than {count(days, 'day')} ago)"
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
    from api.client import LongtakeClient

    return LongtakeClient(args.api_url, api_key=args.resolved_api_key)


def read_script(path: Path) -> str:
    """A script file's text (UTF-8); `-` reads standard input. ValueError saying what to fix."""
    if str(path) == "-":
        return sys.stdin.read()
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def _submit_inputs(args: argparse.Namespace) -> None:
    """With --presenter there is no IMAGE: a lone positional path is the speech track."""
    if args.presenter is not None and args.audio is None and args.script is None:
        args.image, args.audio = None, args.image


def _submit_usage(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line's choice of portrait, prompt and speech, if
    anything."""
    inputs = "give IMAGE and AUDIO, or --presenter NAME and AUDIO"
    if args.presenter is not None:
        given = [
            what
            for what, value in (("IMAGE", args.image), ("--prompt", args.prompt),
                                ("--size", args.size))
            if value is not None
        ]  # fmt: skip
        if given:
            return (
                f"--presenter {args.presenter} brings its own portrait, prompt and size: "
                f"drop {' and '.join(given)}"
            )
    elif args.image is None:
        return f"{inputs} (--script FILE may stand in for AUDIO)"
    if args.audio is None and args.script is None:
        return f"{inputs}: a speech track, or a script (--script FILE) to be spoken instead"
    if args.presenter is None and args.prompt is None:
        return "give --prompt (or --presenter NAME instead of IMAGE)"
    if args.audio is not None and args.script is not None:
        return "give a speech track (AUDIO) or a script (--script FILE), one of the two"
    if args.script is None and (args.language or args.voice or args.speech_engine):
        return "--language, --voice and --speech-engine go with --script"
    return None


def cmd_submit(settings: Settings, args: argparse.Namespace) -> int:
    _submit_inputs(args)
    if (problem := _submit_usage(args)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    for path in (args.image, args.audio):
        if path is not None and not path.is_file():
            print(f"error: {path} is not a file", file=sys.stderr)
            return 2
    script = None
    if args.script is not None:
        try:
            script = read_script(args.script)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    with _client(args) as client:
        # the size that suits the model this deployment runs, unless the user chose one (a
        # presenter has its own)
        size = None
        if args.presenter is None:
            size = args.size or client.submit_options()["default_size"]
        job = client.submit(
            args.image,
            args.audio,
            idempotency_key=args.idempotency_key,
            presenter=args.presenter,
            prompt=args.prompt,
            size=size,
            num_clips=args.clips,
            infer_frames=args.infer_frames,
            sample_steps=args.steps,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            priority=args.priority,
            script=script,
            language=args.language,
            voice=args.voice,
            speech_engine=args.speech_engine,
        )
        print(job["id"])
        params = job["params"]
        print(
            f"job {job['id']} queued: {count(job['progress']['clips_total'], 'clip')} of "
            f"{params['infer_frames']} frames at {params['width']}x{params['height']} "
            f"(size {params['size']})"
            + (f" with presenter {job['presenter']}" if job.get("presenter") else ""),
            file=sys.stderr,
        )
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
    if job.get("presenter"):
        lines.insert(2, f"presenter {job['presenter']}")
    if p["fps"]:
        lines.append(f"speed     {p['fps']:.1f} fps, eta {format_eta(p['eta_s'])}")
    if p["last_checkpoint_clip"] is not None:
        lines.append(f"checkpoint after clip {p['last_checkpoint_clip']}")
    if script := job["params"].get("script"):
        text = " ".join(script["text"].split())
        lines.append(
            f"script    {len(script['text'])} characters in {script['language']}, voice "
            f"{script['voice']} ({script['engine']}): {text[:60]}{'...' if len(text) > 60 else ''}"
        )
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


LIST_ROW = "{id:<36}  {status:<10} {clips:>13}  {created}"


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.list(status=args.status, limit=args.limit)
    print(LIST_ROW.format(id="JOB", status="STATUS", clips="CLIPS", created="CREATED"))
    for job in page["jobs"]:
        p = job["progress"]
        clips = f"{p['clips_done']}/{p['clips_total']}"
        print(LIST_ROW.format(id=job["id"], status=job["status"], clips=clips,
                              created=job["created_at"]))  # fmt: skip
    return 0


def cmd_voices(settings: Settings, args: argparse.Namespace) -> int:
    with _client(args) as client:
        engines = client.voices()["engines"]
    for engine in engines:
        if args.engine and engine["name"] != args.engine:
            continue
        languages = engine["languages"]
        if args.language and args.language not in languages:
            continue
        voices = [
            v for v in engine["voices"] if not args.language or not v["languages"]
            or args.language in v["languages"]
        ]  # fmt: skip
        default = " (default)" if engine["default"] else ""
        print(f"engine {engine['name']}{default}: {count(len(languages), 'language')}, "
              f"{count(len(voices), 'voice')}; default voice {engine['default_voice']}")  # fmt: skip
        if not args.language:
            print("languages  " + " ".join(languages))
        for v in voices:
            gender = f"  {v['gender']}" if v["gender"] else ""
            speaks = f"  ({', '.join(v['languages'])})" if v["languages"] else ""
            print(f"  {v['id']:<24} {v['name']}{gender}{speaks}")
    return 0


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


# --------------------------------------------------------------------------- presenters


def _is_reference(value: str) -> bool:
    return value.startswith("s3://") or value.startswith("upl_")


def cmd_presenters_create(settings: Settings, args: argparse.Namespace) -> int:
    image: Path | str = args.image
    if not _is_reference(args.image):
        image = Path(args.image)
        if not image.is_file():
            print(f"error: {image} is not a file (nor an s3:// URI or upload id)", file=sys.stderr)
            return 2
    with _client(args) as client:
        size = args.size or client.submit_options()["default_size"]
        presenter = client.create_presenter(args.name, image, prompt=args.prompt, size=size)
    print(presenter["name"])
    print(
        f"presenter {presenter['name']}: {presenter['image_width']}x{presenter['image_height']} "
        f"portrait, videos at {presenter['width']}x{presenter['height']} (size "
        f"{presenter['size']}); submit with `longtake submit --presenter {presenter['name']} "
        "AUDIO`",
        file=sys.stderr,
    )
    return 0


PRESENTER_ROW = "{name:<24} {size:<10} {video:<10} {prompt}"


def cmd_presenters_list(settings: Settings, args: argparse.Namespace) -> int:
    with _client(args) as client:
        found = client.presenters()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print(PRESENTER_ROW.format(name="NAME", size="SIZE", video="VIDEO", prompt="PROMPT"))
    for p in found:
        prompt = p["prompt"] if len(p["prompt"]) <= 60 else p["prompt"][:59] + "…"
        video = f"{p['width']}x{p['height']}"
        print(PRESENTER_ROW.format(name=p["name"], size=p["size"], video=video, prompt=prompt))
    return 0


def cmd_presenters_show(settings: Settings, args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(json.dumps(client.presenter(args.name), indent=2))
    return 0


def cmd_presenters_delete(settings: Settings, args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete_presenter(args.name)
    print(f"presenter {args.name} deleted; jobs that used it render as they were submitted")
    return 0


# --------------------------------------------------------------------------- keys and tenants


def _database(settings: Settings, args: argparse.Namespace):
    return (settings.embedded() if args.embedded else settings).make_database()


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


def cmd_batch_submit(settings: Settings, args: argparse.Namespace) -> int:
    from ops.manifest import ManifestError, batch_key, read_jobs, upload_local_files

    try:
        jobs = read_jobs(
            args.source, image=args.image, prompt=args.prompt, presenter=args.presenter
        )
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with _client(args) as client:
        defaults = {
            k: v
            for k, v in {
                # for jobs that name no size: the one that suits this deployment's model
                "size": args.size or client.submit_options()["default_size"],
                "priority": args.priority,
                "checkpoint_every": args.checkpoint_every,
                "webhook_url": args.webhook,
                # for the jobs with a script (the API gives them only to those)
                "language": args.language,
                "voice": args.voice,
            }.items()
            if v is not None
        }
        try:
            uploaded = upload_local_files(jobs, client.upload)
        except ManifestError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        body = {"name": args.name or args.source.name, "defaults": defaults, "jobs": jobs}
        batch = client.create_batch(body, idempotency_key=batch_key(body))
        print(batch["id"])
        print(
            f"batch {batch['id']}: {count(batch['jobs_total'], 'job')} queued "
            f"({count(len(uploaded), 'file')} uploaded)",
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
    print(f"batch {args.batch}: {count(result['canceled'], 'job')} canceled or stopping")
    return 0


# --------------------------------------------------------------------------- parser


def _uuid_of(kind: str):
    """An argparse type: the id of a job or a batch (a UUID), or a plain message."""

    def parse(text: str) -> str:
        try:
            return str(uuid.UUID(text))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a {kind} id: {text!r} ({kind} ids look like {EXAMPLE_ID})"
            ) from None

    return parse


EXAMPLE_ID = "0f8e2a4c-6b1d-4e3f-9a57-2c4d6e8f0a1b"
job_id, batch_id = _uuid_of("job"), _uuid_of("batch")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a whole number of at least 1: {text!r}")
    return value


QUICK = "--size 128*128 --clips 2"
"""A small first render: the tiny model on two CPU cores renders 128*128 at about 1.3 frames
per second (the demo's three clips, measured under load), 720*400 at well under one."""


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
        "submit",
        cmd_submit,
        "upload a portrait and a speech track (or name a presenter, or give a script to be "
        "spoken); prints the job id",
        api=True,
    )
    p.epilog = (
        f"For a quick look at a result, render a small part first: {QUICK} "
        "(two clips of about two seconds each, at the smallest size). Instead of AUDIO, "
        "--script FILE --language LANG [--voice VOICE] has the server speak the script "
        "(`longtake voices` lists languages and voices). Instead of IMAGE, --prompt and "
        "--size, --presenter NAME uses one of your presenters: `submit --presenter NAME AUDIO` "
        "or `submit --presenter NAME --script FILE --language LANG`."
    )
    p.add_argument("image", type=Path, nargs="?", help="the portrait (not with --presenter)")
    p.add_argument(
        "audio",
        type=Path,
        nargs="?",
        help="the speech track (or give --script); with --presenter, the only path given",
    )
    p.add_argument(
        "--script",
        type=Path,
        metavar="FILE",
        help="a UTF-8 text file the server speaks as the job's audio (-: standard input)",
    )
    p.add_argument("--language", help="the script's language, e.g. en-us (`longtake voices`)")
    p.add_argument("--voice", help="the voice that speaks it (default: the engine's)")
    p.add_argument("--speech-engine", help="the engine that speaks it (default: the server's)")
    p.add_argument("--prompt", help="what the video shows (required without --presenter)")
    p.add_argument(
        "--presenter",
        help="one of your presenters (`longtake presenters list`): its portrait, prompt and "
        "size instead of IMAGE, --prompt and --size",
    )
    p.add_argument(
        "--size",
        default=None,
        help="area key such as 720*400 or 128*128 (default: what the server suggests for the "
        "model it runs: 128*128 for the tiny CPU model, 720*400 for liveavatar-14b)",
    )
    p.add_argument(
        "--clips",
        type=positive_int,
        default=None,
        help="number of clips of --infer-frames frames (default: to the end of the audio)",
    )
    p.add_argument("--infer-frames", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="sampling steps")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None, help="clips between checkpoints")
    p.add_argument("--priority", type=int, default=None)
    p.add_argument("--idempotency-key", default=None)
    p.add_argument("--watch", action="store_true", help="then watch it until it ends")
    p.add_argument("--interval", type=float, default=1.0)

    p = add("voices", cmd_voices, "the languages and voices a script may be spoken in", api=True)
    p.add_argument("--language", help="only the voices that speak this language")
    p.add_argument("--engine", help="only this engine")

    p = add("status", cmd_status, "show a job", api=True)
    p.add_argument("job", type=job_id)
    p.add_argument("--json", action="store_true")
    p.add_argument("--events", action="store_true", help="and its history")

    p = add("list", cmd_list, "list jobs, newest first", api=True)
    p.add_argument(
        "--status", action="append", choices=STATUS_ORDER, help="repeat to match several"
    )
    p.add_argument("--limit", type=positive_int, default=20)

    p = add("watch", cmd_watch, "a live progress bar until the job ends", api=True)
    p.add_argument("job", type=job_id)
    p.add_argument("--interval", type=float, default=1.0)

    p = add(
        "cancel", cmd_cancel, "cancel a job (a running one stops after its current clip)", api=True
    )
    p.add_argument("job", type=job_id)

    p = add(
        "retry",
        cmd_retry,
        "queue a failed or canceled job again, from its last checkpoint",
        api=True,
    )
    p.add_argument("job", type=job_id)

    p = add("fetch", cmd_fetch, "download the finished video", api=True)
    p.add_argument("job", type=job_id)
    p.add_argument("-o", "--output", type=Path, default=None, help="default: <job id>.mp4")

    presenters = sub.add_parser(
        "presenters", help="named portraits, prompts and sizes that jobs name (--presenter)"
    )
    presenters_sub = presenters.add_subparsers(
        dest="presenters_command", required=True, metavar="ACTION"
    )
    p = presenters_sub.add_parser(
        "create", parents=[client], help="check and keep a portrait, a prompt and a size"
    )
    p.set_defaults(func=cmd_presenters_create)
    p.add_argument("name", help="letters, digits, '.', '_' or '-' (at most 64)")
    p.add_argument("image", help="the portrait: a file, an s3:// URI or an upload id")
    p.add_argument("--prompt", required=True, help="what the videos show")
    p.add_argument("--size", help="area key such as 720*400 (default: what the server suggests)")
    p = presenters_sub.add_parser("list", parents=[client], help="your presenters, by name")
    p.set_defaults(func=cmd_presenters_list)
    p.add_argument("--json", action="store_true")
    p = presenters_sub.add_parser("show", parents=[client], help="one presenter, as JSON")
    p.set_defaults(func=cmd_presenters_show)
    p.add_argument("name")
    p = presenters_sub.add_parser(
        "delete", parents=[client], help="delete a presenter (accepted jobs are unaffected)"
    )
    p.set_defaults(func=cmd_presenters_delete)
    p.add_argument("name")

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
        help="a folder of speech tracks, or a CSV/JSONL manifest (audio or a script per job); "
        "prints the batch id",
    )
    p.set_defaults(func=cmd_batch_submit)
    p.add_argument("source", type=Path, help="a folder, or a .csv / .jsonl manifest")
    p.add_argument("--image", type=Path, help="the portrait of jobs that name none")
    p.add_argument("--prompt", help="the prompt of jobs that have none")
    p.add_argument(
        "--presenter",
        help="the presenter of jobs that name no portrait (instead of --image and --prompt)",
    )
    p.add_argument("--size", help="area key such as 720*400, for every job")
    p.add_argument("--priority", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--webhook", help="POST every job's events to this URL")
    p.add_argument("--language", help="the language of jobs with a script that name none")
    p.add_argument("--voice", help="the voice of jobs with a script that name none")
    p.add_argument("--name", help="a label (default: the folder or manifest name)")
    p.add_argument("--wait", action="store_true", help="then follow it until every job ends")
    p.add_argument("--interval", type=float, default=2.0)
    p = batch_sub.add_parser("status", parents=[client], help="a batch's jobs by status")
    p.set_defaults(func=cmd_batch_status)
    p.add_argument("batch", type=batch_id)
    p.add_argument("--json", action="store_true")
    p = batch_sub.add_parser("watch", parents=[client], help="one progress line until it ends")
    p.set_defaults(func=cmd_batch_watch)
    p.add_argument("batch", type=batch_id)
    p.add_argument("--interval", type=float, default=2.0)
    p = batch_sub.add_parser("cancel", parents=[client], help="cancel every unfinished job")
    p.set_defaults(func=cmd_batch_cancel)
    p.add_argument("batch", type=batch_id)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:
            # written out here rather than at exit, so that a closed pipe is caught below
            sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`longtake status J | head -3`): stop quietly, as Unix tools do
        quiet_closed_output()
        return 141  # 128 + SIGPIPE, what the shell shows for a command stopped by a closed pipe


def _run(argv: list[str] | None) -> int:
    settings = Settings()
    args = build_parser(settings).parse_args(argv)
    if hasattr(args, "api_url"):
        args.resolved_api_key = api_key_of(settings, args)
    from api.client import ApiClientError  # httpx, only once a command runs

    try:
        return args.func(settings, args)
    except ApiClientError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
