"""A rank process of the TPP engine: load once, then serve streams until told to stop.

Started by `pipeline.tpp.engine.Engine` with the spawn method (no CUDA state is ever forked).
It loads only the parts its placement names (pipeline.weights.Placement.tpp_rank), joins the
process group, says Ready, and then runs one stream at a time (pipeline.tpp.stage). Any error
is reported to the caller, then the process exits; so does a rank whose caller has gone.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import traceback
from datetime import timedelta
from typing import Any

from pipeline.tpp import protocol as msg
from pipeline.tpp.config import EngineConfig


def rank_main(rank: int, cfg: EngineConfig, conn: Any, store: str) -> None:
    """Process entry point."""
    for key, value in cfg.extra_env:
        os.environ[key] = value
    _exit_with_parent()
    try:
        ctx = _setup(rank, cfg, conn, store)
        _serve(ctx)
    except (EOFError, BrokenPipeError):  # the caller is gone: nothing to report to
        os._exit(0)
    except BaseException as exc:  # reported, then this rank ends; the caller tears down
        try:
            conn.send(msg.Failed(rank, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        finally:
            os._exit(1)
    _close_process_group()
    os._exit(0)


def _exit_with_parent() -> None:
    """A rank never outlives the process that started it (no orphans holding GPUs)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _setup(rank: int, cfg: EngineConfig, conn: Any, store: str) -> Any:
    import torch
    import torch.distributed as dist

    from pipeline import params
    from pipeline.components import build_random, load_released
    from pipeline.model import attention, fused
    from pipeline.presets import get_preset
    from pipeline.tpp.links import connect
    from pipeline.tpp.stage import RankContext
    from pipeline.vae import use_channels_last
    from pipeline.weights import Placement

    started = time.perf_counter()
    if cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    device = torch.device(cfg.devices[rank])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dit_group = side_group = None
    if cfg.world_size > 1:
        dist.init_process_group(
            cfg.backend,
            init_method=f"file://{store}",
            rank=rank,
            world_size=cfg.world_size,
            timeout=timedelta(seconds=cfg.comm_timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
        dit = list(range(cfg.dit_ranks))
        # every rank creates every group, in the same order
        dit_group = dist.new_group(dit)
        side_group = dist.new_group(dit)
        connect(rank, cfg.world_size, cfg.dit_ranks - 1, side_group, device)
    attention.set_backend(cfg.attention)
    fused.set_compile(cfg.compile)

    preset = get_preset(cfg.preset)
    if cfg.dit_overrides:
        preset = preset.with_dit(**dict(cfg.dit_overrides))
    placement = Placement.tpp_rank(
        rank,
        cfg.world_size,
        vae_on_own_gpu=cfg.vae_on_own_rank,
        device_of=lambda r: torch.device(cfg.devices[r]),
        offload_text_encoder=cfg.offload_text_encoder,
    )
    dtype = cfg.torch_dtype
    if cfg.random_weights or preset.name == "tiny":
        comps = build_random(preset, device, dtype, cfg.weights_seed, placement)
    else:
        if cfg.checkpoint_dir is None:
            raise ValueError(f"preset {preset.name!r} needs checkpoint_dir (or random_weights)")
        comps = load_released(preset, cfg.checkpoint_dir, device, dtype, placement)
    if comps.dit is not None:  # this rank's own copy, after loading (and the LoRA merge)
        comps.dit.set_precision(params.check_precision(cfg.precision))
    if comps.vae is not None and device.type == "cuda" and cfg.vae_channels_last:
        use_channels_last(comps.vae)
    info: dict[str, Any] = {
        "pid": os.getpid(),
        "device": str(device),
        "parts": sorted(placement.parts),
        "load_s": time.perf_counter() - started,
        "precision": cfg.precision,
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["memory_allocated"] = torch.cuda.memory_allocated(device)
    ctx = RankContext(
        rank, cfg, preset, device, comps, conn, threading.Lock(), dit_group, side_group
    )
    ctx.send(msg.Ready(rank, info))
    return ctx


def _serve(ctx: Any) -> None:
    import torch

    from pipeline.tpp.stage import RankStream

    with torch.inference_mode(False), torch.no_grad():
        while True:
            m = ctx.conn.recv()
            if isinstance(m, msg.Shutdown):
                return
            if isinstance(m, msg.Stop):  # no stream open: nothing to stop
                ctx.send(msg.Stopped(ctx.rank, 0, {}))
                continue
            if not isinstance(m, msg.Open):
                raise RuntimeError(f"unexpected message between streams: {m!r}")
            stream = RankStream(ctx, m.spec)
            ctx.send(msg.Opened(ctx.rank, stream.open_s))
            stream.run()
            shutdown = stream.shutdown_requested
            del stream
            gc.collect()
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
            if shutdown:
                return


def _close_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
