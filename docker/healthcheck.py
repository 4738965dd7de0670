"""Container health checks of the longtake images; exit status 0 healthy, 1 not.

    python healthcheck.py api                  # GET /readyz: the database and broker answer
    python healthcheck.py relay                # the database and broker accept connections
    python healthcheck.py worker [--name N]    # this container's Celery node answers a ping
    python healthcheck.py url URL              # any HTTP endpoint answers 2xx (flower)

Configuration comes from the same LONGTAKE_* variables as the process being checked (read by
ops.settings, as everywhere). A check prints one line saying what it found, which Docker keeps
in `docker inspect` and shows in `docker compose ps`.
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable

TIMEOUT_S = 5.0


def check_url(url: str, timeout_s: float = TIMEOUT_S) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return f"{url}: {response.status}"
    except urllib.error.HTTPError as e:  # 503 from /readyz names what is unreachable
        body = e.read(500).decode(errors="replace")
        raise RuntimeError(f"{url}: {e.code} {body}") from None
    except OSError as e:
        raise RuntimeError(f"{url}: {e}") from None


def check_api() -> str:
    from ops.settings import Settings

    return check_url(f"http://127.0.0.1:{Settings().port}/readyz")


def check_relay() -> str:
    from dispatch.celery_app import make_celery_app
    from dispatch.relay import CeleryDispatcher
    from ops.settings import Settings

    settings = Settings()
    database = settings.make_database()
    try:
        database.ping()
    finally:
        database.dispose()
    app = make_celery_app(settings.celery_config(), task_modules=())
    try:
        CeleryDispatcher(app).ping()
    finally:
        app.close()
    return "database and broker reachable"


def default_worker_name() -> str:
    """What `longtake worker` names its node by default (`render@%h`)."""
    return f"render@{socket.gethostname()}"


def check_worker(name: str, timeout_s: float = 3.0) -> str:
    from dispatch.celery_app import make_celery_app
    from ops.settings import Settings

    app = make_celery_app(Settings().celery_config(), task_modules=())
    try:
        replies = app.control.ping(destination=[name], timeout=timeout_s)
    finally:
        app.close()
    if not any(name in reply for reply in replies):
        raise RuntimeError(f"worker {name} did not answer a ping within {timeout_s:g} s")
    return f"worker {name} answered"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="longtake container health checks")
    sub = parser.add_subparsers(dest="role", required=True)
    sub.add_parser("api", help="the API's /readyz")
    sub.add_parser("relay", help="the outbox relay's database and broker")
    p = sub.add_parser("worker", help="this container's render worker")
    p.add_argument("--name", default=None, help="the worker's node name (default render@HOST)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    p = sub.add_parser("url", help="an HTTP endpoint")
    p.add_argument("url")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    checks: dict[str, Callable[[], str]] = {
        "api": check_api,
        "relay": check_relay,
        "worker": lambda: check_worker(args.name or default_worker_name(), args.timeout),
        "url": lambda: check_url(args.url),
    }
    try:
        print(checks[args.role]())
    except Exception as e:
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
