#!/usr/bin/env bash
# Install the Chromium that the dashboard's browser test drives (tests/dashboard), when it is
# missing: Debian's package, which plays H.264 in MP4. Playwright's own browser downloads are
# never used.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ ! -x "$CHROMIUM" ]; then
  if ! command -v apt-get >/dev/null; then
    echo "install Chromium at $CHROMIUM (the dashboard's browser test needs it)" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

"$CHROMIUM" --version 2>/dev/null  # (Debian's wrapper script warns on stderr)
