#!/usr/bin/env bash
# Entry point of the longtake images: a role, or any command.
#
#   api            the HTTP API: `longtake serve --no-relay` (the relay runs as its own service;
#                  the schema is brought up to date by a `migrate` run before the API starts)
#   relay          the outbox relay, lease reaper and webhook deliveries: `longtake relay`
#                  (any number may run)
#   worker         a render worker: `longtake worker` (Celery, queue `render`, one job at a time)
#   migrate        `longtake migrate`, then exit
#   flower         Celery's web monitor (the `flower` stage of the API image)
#   celery ARGS    Celery's own tools on the deployment's broker: `celery inspect active`,
#                  `celery control cancel_consumer render` (see docker/celery_cli.py)
#   health ROLE    the container health check of ROLE (docker/healthcheck.py)
#   anything else  run as given: `longtake submit ...`, `bash`, ...
#
# Extra arguments go to the command (`worker --name render-a@%h`). Every process is configured
# by LONGTAKE_* variables only. The command replaces this shell (exec), so SIGTERM from
# `docker stop` reaches it directly: a worker's soft shutdown depends on that.
#
# `--dry-run` as the first argument prints the command, one argument per line, instead of
# running it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=1
  shift
fi

if [[ $# -eq 0 ]]; then
  echo "usage: entrypoint.sh [--dry-run] {api|relay|worker|migrate|flower|celery ARGS|health ROLE|COMMAND...}" >&2
  exit 2
fi

role="$1"
shift
case "$role" in
  api) cmd=(longtake serve --no-relay "$@") ;;
  relay) cmd=(longtake relay "$@") ;;
  worker) cmd=(longtake worker "$@") ;;
  migrate) cmd=(longtake migrate "$@") ;;
  flower | celery)
    cd "$HERE" # celery imports the --app module from the working directory
    if [[ "$role" == flower ]]; then set -- flower "$@"; fi
    cmd=(celery --app celery_cli "$@")
    ;;
  health) cmd=(python "$HERE/healthcheck.py" "$@") ;;
  *) cmd=("$role" "$@") ;;
esac

if [[ $dry_run -eq 1 ]]; then
  printf '%s\n' "${cmd[@]}"
  exit 0
fi
exec "${cmd[@]}"
