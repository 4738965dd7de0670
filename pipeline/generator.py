"""The generator: models loaded once on one device, serving render streams one after another.

It is the single-device `pipeline.engine.Engine`; `pipeline.tpp.Engine` is the same contract on
several devices.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import torch

from pipeline import params
from pipeline import state as state_io
from pipeline import vae as vae_mod
from pipeline.components import Components, build_deferred, build_random, load_released
from pipeline.dit_loading import DeferredDit, default_dtype, weights_dir
from pipeline.host_buffers import HostBuffers
from pipeline.params import Precision
from pipeline.presenters import PresenterCache, PresenterScope
from pipeline.presets import Preset, get_preset
from pipeline.request import RenderRequest
from pipeline.stream import Decode, Stream


def resolve_name(name: str, checkpoint_dir: str | os.PathLike[str] | None) -> str:
    """A preset name, with "auto" decided by what the checkpoints directory holds."""
    if name != "auto":
        return name
    if checkpoint_dir is None:
        raise ValueError('preset "auto" needs checkpoint_dir (where the release would be)')
    from pipeline.weights import resolve_preset

    return resolve_preset(checkpoint_dir)


class Generator:
    writes_own_checkpoints = False
    """The caller writes this engine's checkpoints (`pipeline.state.write_checkpoint` of a
    `state_dict()`): there is nothing to gain from the stream writing them itself."""

    def __init__(
        self,
        preset: Preset,
        components: Components,
        presenter_cache: PresenterCache | None = None,
    ):
        self.preset = preset
        self.components = components
        self.presenter_cache = presenter_cache
        """Where streams opened with a namespace keep and find their presenters
        (pipeline/presenters.py); one cache may serve several generators."""
        self.engine_id = uuid.uuid4().hex
        """Names this generator's model in the cache's keys: no other engine's entries are
        used, even of the same preset."""
        self._active: Stream | None = None
        self.host_buffers = HostBuffers(page_lock=components.dit_info.device.type == "cuda")
        """Where its streams' states are captured (pinned on a GPU), kept across streams: a
        worker page-locks its capture memory once."""

    @property
    def precision(self) -> Precision:
        """How the DiT's linear layers run ("bf16" or "fp8"), fixed when it was built."""
        return self.components.dit_info.precision

    @classmethod
    def from_preset(
        cls,
        name: str,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        random_weights: bool = False,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        seed: int = 0,
        dit_overrides: dict[str, Any] | None = None,
        precision: str = params.PRECISION_DEFAULT,
        presenter_cache: PresenterCache | None = None,
        defer_dit: bool = False,
        dit_loading: DeferredDit | None = None,
    ) -> Generator:
        """Build a preset's models on `device` in `dtype` (default: bf16 on GPU, fp32 on CPU).

        name "auto": `liveavatar-14b` when the release under `checkpoint_dir` verifies, else
        `tiny` (with a logged message saying what is missing).
        random_weights: seeded random weights instead of a checkpoint (the `tiny` preset always
        uses them); benchmarks of the 14B architecture use this, as speed does not depend on
        weight values. dit_overrides: change DiT settings (e.g. num_layers for a reduced depth).
        precision: "bf16" (the DiT's linears in `dtype`) or "fp8" (their weights quantised to
        float8 e4m3 once loaded, the LoRA merged; pipeline/model/fp8.py). On a GPU the VAE's
        kernels are stored channels-last for the streaming decoder. presenter_cache: see
        `open`'s namespace. defer_dit: return once the encoders and the VAE are built, the DiT
        still loading in a thread (pipeline.components.DeferredDit); a stream opened meanwhile
        does its other work first and waits for the DiT where it needs it (a worker resumes a
        job while its model loads). dit_loading: that DiT load, already started by
        `pipeline.dit_loading.start_preset_dit` with the same arguments (before this module's
        imports, as a worker does); implies defer_dit.
        """
        precision = params.check_precision(precision)
        preset = get_preset(resolve_name(name, checkpoint_dir))
        if dit_overrides:
            preset = preset.with_dit(**dit_overrides)
        device = torch.device(device)
        if dtype is None:
            dtype = default_dtype(device)
        weights = weights_dir(preset, random_weights, checkpoint_dir)
        if defer_dit or dit_loading is not None:  # the FP8 conversion in the loading thread
            comps = build_deferred(
                preset,
                device,
                dtype,
                precision,
                seed=seed,
                checkpoint_dir=weights,
                dit_dir=weights,
                loading=dit_loading,
            )
        elif weights is None:
            comps = build_random(preset, device, dtype, seed)
        else:
            comps = load_released(preset, weights, device, dtype)
        if comps.dit is not None:  # built here, not deferred
            comps.dit.set_precision(precision)
        assert comps.vae is not None
        if device.type == "cuda":
            vae_mod.use_channels_last(comps.vae)
        return cls(preset, comps, presenter_cache)

    def open(
        self,
        request: RenderRequest,
        state: state_io.StateDict | state_io.TensorSource | None = None,
        *,
        resume_from: str | os.PathLike[str] | None = None,
        decode: Decode = "online",
        progress: Callable[[int], None] | None = None,
        namespace: str | None = None,
    ) -> Stream:
        """Start a stream for `request`, or continue one from a state / checkpoint directory.

        A resumed stream must be opened with the same request (ValueError otherwise). Opening a
        stream closes the generator's previous one and frees its caches.

        namespace (the caller's tenant, say): with a `presenter_cache`, a fresh stream takes
        what its open computes from the presenter (portrait, prompt, size, precision) from the
        cache, or computes and stores it; entries of another namespace are never seen. The
        frames are the same either way. None: the cache is not used.
        """
        if state is not None and resume_from is not None:
            raise ValueError("give either state or resume_from, not both")
        if resume_from is not None:  # read tensor by tensor into the stream, as it opens
            state = state_io.CheckpointSource(resume_from)
        if state is not None:  # before closing the open stream: another precision cannot resume
            state_io.require_precision(state_io.as_source(state).meta, self.precision)
        if self._active is not None:
            self._active.close()
            self._active = None
        scope = None
        if self.presenter_cache is not None and namespace is not None:
            scope = PresenterScope(self.presenter_cache, namespace, self.engine_id)
        stream = Stream(
            self.preset,
            self.components,
            request,
            state=state,
            decode=decode,
            progress=progress,
            presenters=scope,
            host_buffers=self.host_buffers,
        )
        self._active = stream
        return stream

    def shutdown(self) -> None:
        """Close the open stream, if any. The models stay loaded: there is no process or
        device of its own to release, and `open` works again afterwards."""
        if self._active is not None:
            self._active.close()
            self._active = None
