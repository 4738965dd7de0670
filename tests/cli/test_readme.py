"""The README's first section, as a new user reads it before running anything."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def first_section() -> str:
    text = (ROOT / "README.md").read_text()
    return " ".join(text.split("\n## ", 1)[0].split())


def installed_by(script: Path) -> set[str]:
    """The Debian packages a setup script may install with apt."""
    text = script.read_text()
    packages = set(re.findall(r"missing\+=\((\S+)\)", text))
    for line in re.findall(r"apt-get install ([^\n]*)", text):
        packages |= {w for w in line.split() if re.fullmatch(r"[a-z][a-z0-9.+-]+", w)}
    return packages


def test_it_names_every_package_that_make_test_installs_and_that_apt_needs_root():
    scripts = [ROOT / "ops" / "dev" / n for n in ("start-services.sh", "install-test-tools.sh")]
    makefile = (ROOT / "Makefile").read_text()
    assert all(f"bash ops/dev/{s.name}" in makefile for s in scripts)  # what `make test` runs
    packages = set().union(*map(installed_by, scripts))
    assert {"postgresql", "redis-server", "chromium", "prometheus", "docker-compose"} <= packages
    readme = first_section()
    assert [p for p in sorted(packages) if f"`{p}`" not in readme] == []
    assert "root" in readme and "sudo" in readme


def test_it_says_how_to_run_the_command_that_make_sets_up():
    readme = first_section()
    assert ".venv/bin/longtake" in readme and "source .venv/bin/activate" in readme
    # every command it shows runs as written from the repository root
    shown = re.findall(r"\(`((?:\.venv/bin/)?longtake [^`]*)`\)", readme)
    assert shown and all(c.startswith(".venv/bin/longtake ") for c in shown)
