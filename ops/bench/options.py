"""Options that benchmarks of one stream of the DiT take alike (shared by the benchmarks)."""

from __future__ import annotations

import argparse

import torch


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--preset (default liveavatar-14b), --device (the GPU where there is one) and --size
    (default 720*400)."""
    p.add_argument("--preset", default="liveavatar-14b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", default="720*400")
