"""Print the project's third-party requirements, read from its pyproject.toml.

    python requirements.py pyproject.toml --extra cudnn   # the worker image
    python requirements.py pyproject.toml --api           # without the model stack (the API image)

The images install these first and the project itself afterwards with `--no-deps`, so that a
change to the source does not reinstall every dependency.

Why `--api`: longtake is one distribution, and its dependencies include torch and the Hugging
Face stack, which only the render worker runs. The processes of the API image (`longtake serve`,
`relay`, `migrate`) never import them (tests/deploy runs them with those imports blocked), and
installing them would put several GB of CUDA wheels into an image that has no GPU. A CPU torch
wheel would still be ~200 MB of dead weight; leaving the stack out keeps the image small and
makes an accidental import fail loudly instead of slowly.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

MODEL_STACK = frozenset(
    {"torch", "diffusers", "transformers", "safetensors", "huggingface-hub", "sentencepiece"}
)
"""Distributions that only the render worker imports (normalised names)."""

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalise(name: str) -> str:
    """PEP 503 normalised distribution name: `Huggingface_Hub` -> `huggingface-hub`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"cannot read a distribution name from {requirement!r}")
    return normalise(match.group(1))


def requirements(pyproject: dict, *, api: bool = False, extras: Sequence[str] = ()) -> list[str]:
    """The `[project] dependencies` of a parsed pyproject, without the model stack if `api`,
    then those of the optional `extras` (the worker's cuDNN frontend, say)."""
    deps: list[str] = list(pyproject["project"]["dependencies"])
    if api:
        deps = [d for d in deps if requirement_name(d) not in MODEL_STACK]
    optional = pyproject["project"].get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise ValueError(f"no optional dependencies {extra!r}; there are {sorted(optional)}")
        deps += optional[extra]
    return deps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--api", action="store_true", help="leave out the model stack")
    parser.add_argument(
        "--extra", action="append", default=[], help="an optional group's too (repeatable)"
    )
    args = parser.parse_args(argv)
    with args.pyproject.open("rb") as f:
        lines = requirements(tomllib.load(f), api=args.api, extras=args.extra)
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
