"""The presenter cache: a stream's open, kept for the next stream of the same presenter.

Opening a stream does four things that depend on its presenter alone (portrait, prompt, size,
precision, and the model), not on its speech or its seed: the prompt's umT5 encoding, the
portrait's latents, the sink's run through the model (`Denoiser.prefill_sink`: the reference
and motion latents at timestep 0 against the prompt's keys), and the decoder's warm-up decode
of the motion latents. On the 14B model that is most of an open (umT5-XXL alone is 11 GB that
visits the GPU). A `Presenter` holds the results; a `PresenterCache` keeps them, bounded in
bytes and least recently used first out, so that a presenter seen before opens by copying them
into the new stream's caches.

A cached open gives the very frames of a cold one: the tensors are the cold open's own results,
copied exactly (same values, dtype and memory layout) into the same places. Nothing in a
`Presenter` is ever written after it is stored, and a stream gets copies, never the entry's
tensors.

Two tiers, sizes given by the owner: entries on the stream's device (the GPU; for a CPU engine,
host memory) and copies in host memory (page-locked when CUDA is there, for a fast copy back).
A presenter pushed out of the device tier moves to the host tier if it fits there; a host copy
that is used is copied back to the device and kept in both tiers (so pushing it out again costs
no copy). Either size may be 0; an entry larger than a tier skips it.

Keys (`EntryKey`): the presenter's content key (`pipeline.presenter_key`, with the caller's
namespace in it: the worker passes the tenant) and the engine that computed it, so that no
namespace reads another's entries and no engine uses another model's.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from pipeline.cache import SinkKeys, StepKVCache
from pipeline.presenter_key import presenter_key
from pipeline.vae import StreamingDecoder

if TYPE_CHECKING:
    from pipeline.request import RenderRequest

_DECODER = "decoder."


@dataclass(frozen=True)
class EntryKey:
    presenter: str
    """`pipeline.presenter_key.presenter_key(namespace, ...)`: what jobs carry for affinity."""
    engine: str
    """The engine (its model, dtype and device) that computed the entry."""


@dataclass(frozen=True, eq=False)
class Presenter:
    """What a fresh stream computes before its first clip from its presenter alone.

    tensors:
        text              umT5 encoder states of the prompt [n_tokens, text_dim] float32
        motion            the portrait's latents [16, 1 + (motion_frames - 1) / 4, h, w]
        sink.ref_keys     the sink's reference keys, unrotated [layers, ref_tokens, H, D]
        sink.motion_keys  its motion keys, rotated [layers, motion_tokens, H, D]
        sink.values       its values [layers, sink_tokens, H, D] (the same in every step's cache)
        decoder.*         the streaming decoder's cache after the warm-up decode
    """

    tensors: dict[str, torch.Tensor]
    decoder_meta: dict[str, Any]
    """`StreamingDecoder.state_dict`'s plain metadata."""
    homes: dict[str, torch.device]
    """Where each tensor is used (a host copy goes back there)."""

    @property
    def text(self) -> torch.Tensor:
        return self.tensors["text"]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def copy_to(self, where: str) -> Presenter:
        """A copy of every tensor, same strides: in host memory ("host": page-locked when
        CUDA is available) or back where each is used ("home")."""
        pin = where == "host" and torch.cuda.is_available()
        out = {}
        for name, t in self.tensors.items():
            device = torch.device("cpu") if where == "host" else self.homes[name]
            out[name] = _copy(t, device, pin)
        for device in {d for d in self.homes.values() if d.type == "cuda"}:
            torch.cuda.synchronize(device)  # the copies are complete before anyone uses them
        return Presenter(out, copy.deepcopy(self.decoder_meta), dict(self.homes))


def copy_tensor(t: torch.Tensor) -> torch.Tensor:
    """A copy of `t` where it is, with its strides."""
    return _copy(t, t.device)


def _copy(t: torch.Tensor, device: torch.device, pin: bool = False) -> torch.Tensor:
    """A copy of `t` on `device` with `t`'s strides (a channels-last decoder cache stays
    channels-last: another layout would change the kernels that read it, and their bits)."""
    dense = t if _dense(t) else t.contiguous()
    out = torch.empty_strided(
        dense.size(), dense.stride(), dtype=dense.dtype, device=device, pin_memory=pin
    )
    out.copy_(dense, non_blocking=True)
    return out


def _dense(t: torch.Tensor) -> bool:
    """Whether `t`'s elements fill a block of memory exactly once, in some order of its
    dimensions (a contiguous or channels-last tensor, not a slice of a larger one)."""
    expected = 1
    for stride, n in sorted((s, n) for s, n in zip(t.stride(), t.size(), strict=True) if n > 1):
        if stride != expected:
            return False
        expected *= n
    return True


def capture(
    text: torch.Tensor,
    motion: torch.Tensor,
    cache: StepKVCache,
    sink_keys: SinkKeys,
    decoder: StreamingDecoder,
) -> Presenter:
    """A fresh stream's presenter, right after its sink prefill and warm-up decode (copies)."""
    live = {
        "text": text,
        "motion": motion,
        "sink.ref_keys": sink_keys.ref,
        "sink.motion_keys": cache.sink_motion_keys,
        "sink.values": cache.sink_values,
        "sink.kv_mults": sink_keys.mults,
    }
    dec_tensors, dec_meta = decoder.state_dict()
    live.update({_DECODER + k: v for k, v in dec_tensors.items()})
    tensors = {name: _copy(t, t.device) for name, t in live.items()}
    homes = {name: t.device for name, t in live.items()}
    return Presenter(tensors, copy.deepcopy(dec_meta), homes)


def restore(
    presenter: Presenter,
    caches: list[StepKVCache],
    sink_keys: SinkKeys,
    decoder: StreamingDecoder,
) -> torch.Tensor:
    """Put a presenter (on its home devices) into a fresh stream's caches and decoder, as
    its prefill and warm-up would have left them; returns (a copy of) the motion latents."""
    t = presenter.tensors
    sink_keys.ref.copy_(t["sink.ref_keys"])
    sink_keys.mults.copy_(t["sink.kv_mults"])
    for cache in caches:
        cache.sink_motion_keys.copy_(t["sink.motion_keys"])
        cache.sink_values.copy_(t["sink.values"])
    decoder.load_state_dict(
        {k[len(_DECODER) :]: _copy(v, v.device) for k, v in t.items() if k.startswith(_DECODER)},
        copy.deepcopy(presenter.decoder_meta),
    )
    return _copy(t["motion"], t["motion"].device)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stored: int = 0
    demoted: int = 0
    """Device copies pushed out to the host tier."""
    evicted: int = 0
    """Entries dropped from the cache altogether."""
    too_large: int = 0
    """Presenters larger than both tiers (never stored)."""


@dataclass
class _Entry:
    device: Presenter | None = None
    host: Presenter | None = None


class PresenterCache:
    """Presenters by `EntryKey`, least recently used out first, within two byte budgets:
    `device_bytes` on the streams' device (the GPU), `host_bytes` in (page-locked) host memory.

    Thread-safe: a worker's claim reads `presenter_keys()` while its render thread opens.
    """

    def __init__(self, device_bytes: int, host_bytes: int):
        if device_bytes < 0 or host_bytes < 0:
            raise ValueError("presenter cache sizes must be >= 0 bytes")
        self.device_bytes = device_bytes
        self.host_bytes = host_bytes
        self.stats = CacheStats()
        self._entries: OrderedDict[EntryKey, _Entry] = OrderedDict()  # least recent first
        self._device: OrderedDict[EntryKey, int] = OrderedDict()  # key -> bytes, LRU first
        self._host: OrderedDict[EntryKey, int] = OrderedDict()
        self._lock = threading.Lock()

    # ---- reading -------------------------------------------------------------------------

    def get(self, key: EntryKey) -> Presenter | None:
        """The presenter on its home devices (copied there from the host tier if need be),
        or None. The returned tensors must not be written to."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                return None
            self.stats.hits += 1
            self._entries.move_to_end(key)
            if entry.device is not None:
                self._device.move_to_end(key)
                if entry.host is not None:
                    self._host.move_to_end(key)
                return entry.device
            assert entry.host is not None
            self._host.move_to_end(key)
            on_device = entry.host.copy_to("home")
            if on_device.nbytes <= self.device_bytes:
                entry.device = on_device
                self._device[key] = on_device.nbytes
                self._fit_device()
            return on_device

    def presenter_keys(self) -> tuple[str, ...]:
        """The content keys of the presenters held, most recently used first (what a worker
        tells the claim)."""
        with self._lock:
            return tuple(dict.fromkeys(k.presenter for k in reversed(self._entries)))

    def keys(self) -> list[EntryKey]:
        """The entries' keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def usage(self) -> tuple[int, int]:
        """Bytes held (device tier, host tier)."""
        with self._lock:
            return sum(self._device.values()), sum(self._host.values())

    # ---- writing -------------------------------------------------------------------------

    def put(self, key: EntryKey, presenter: Presenter) -> None:
        """Keep `presenter` (on its home devices; the cache owns it from now on)."""
        size = presenter.nbytes
        with self._lock:
            self._drop(key)
            if size > self.device_bytes and size > self.host_bytes:
                self.stats.too_large += 1
                return
            self.stats.stored += 1
            entry = self._entries[key] = _Entry()
            if size <= self.device_bytes:
                entry.device = presenter
                self._device[key] = size
                self._fit_device()
            else:
                entry.host = presenter.copy_to("host")
                self._host[key] = size
                self._fit_host()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._device.clear()
            self._host.clear()

    def _fit_device(self) -> None:
        """Push least recently used device copies out until the tier fits its budget; each
        goes to the host tier unless it is there already or cannot fit there."""
        while sum(self._device.values()) > self.device_bytes:
            key, size = self._device.popitem(last=False)
            entry = self._entries[key]
            if entry.host is None and size <= self.host_bytes:
                assert entry.device is not None
                entry.host = entry.device.copy_to("host")
                self._host[key] = size
                self.stats.demoted += 1
            entry.device = None
            if entry.host is None:
                del self._entries[key]
                self.stats.evicted += 1
        self._fit_host()

    def _fit_host(self) -> None:
        while sum(self._host.values()) > self.host_bytes:
            key, _ = self._host.popitem(last=False)
            entry = self._entries[key]
            entry.host = None
            if entry.device is None:
                del self._entries[key]
                self.stats.evicted += 1

    def _drop(self, key: EntryKey) -> None:
        if self._entries.pop(key, None) is not None:
            self._device.pop(key, None)
            self._host.pop(key, None)


@dataclass(frozen=True)
class PresenterScope:
    """Where a stream looks its presenter up: the cache, the caller's namespace (a tenant),
    the engine. A stream opened with one uses it; one opened without computes everything."""

    cache: PresenterCache
    namespace: str
    engine: str

    def key(self, request: RenderRequest, fingerprint: dict[str, Any], precision: str) -> EntryKey:
        """The entry of a stream of `request` (fingerprinted by `prepare_inputs`)."""
        content = presenter_key(
            self.namespace, fingerprint["image_sha256"], request.prompt, request.size, precision
        )
        return EntryKey(content, self.engine)
