#!/usr/bin/env bash
# Install the system tools that tests drive, when they are missing, from Debian's packages:
#   chromium        the dashboard's browser test (tests/dashboard; it plays H.264 in MP4).
#                   Playwright's own browser downloads are never used.
#   promtool        checks the alert rules and the Grafana dashboard's queries (tests/monitoring)
#   docker-compose  validates the compose files (tests/deploy)
#   espeak-ng       the embedded speech engine: speaks the scripts of jobs that send text
#                   instead of audio (tests/speech, tests/api/test_scripts.py; docs/speech.md)
set -euo pipefail

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v promtool >/dev/null || missing+=(prometheus)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 \
  || missing+=(docker-compose)
command -v espeak-ng >/dev/null || missing+=(espeak-ng)

if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "install ${missing[*]} (the tests need them)" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  # no recommends: promtool without the Prometheus server's exporters, Compose without an engine
  $sudo env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

/usr/bin/chromium --version 2>/dev/null  # (Debian's wrapper script warns on stderr)
promtool --version 2>&1 | head -n 1
docker-compose version --short 2>/dev/null || docker compose version --short
espeak-ng --version
