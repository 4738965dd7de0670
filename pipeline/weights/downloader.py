"""`longtake checkpoints download`: fetch the release with huggingface_hub.

Only ever needed once per machine, and only where there is internet; rendering never touches
the network. Files land in the layout of layout.py, then the result is verified.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CheckpointError
from .layout import BASE_DIR, BASE_REPO, LORA_DIR, LORA_FILE, LORA_REPO, release_files
from .specs import ReleaseSpec
from .verifier import VerifyReport, verify


@dataclass(frozen=True)
class RepoDownload:
    repo: str
    local_dir: str  # relative to the checkpoints root
    patterns: list[str]  # files to take from the repository


def download_plan() -> list[RepoDownload]:
    """What to fetch: the release files, not whole repositories (Wan2.2-S2V-14B carries a
    second copy of the wav2vec2 weights and example media we do not need)."""
    base = [f.repo_path for f in release_files() if f.repo == BASE_REPO]
    # The shard names come from the index; take whatever shards it lists.
    base = [p for p in base if not p.startswith("diffusion_pytorch_model-")]
    base.append("diffusion_pytorch_model-*.safetensors")
    return [RepoDownload(BASE_REPO, BASE_DIR, base), RepoDownload(LORA_REPO, LORA_DIR, [LORA_FILE])]


@dataclass
class DownloadReport:
    root: Path
    fetched: dict[str, str] = field(default_factory=dict)  # repo -> local folder
    verification: VerifyReport | None = None

    @property
    def ok(self) -> bool:
        return self.verification is not None and self.verification.ok

    def __str__(self) -> str:
        lines = [f"downloaded {repo} -> {path}" for repo, path in self.fetched.items()]
        if self.verification is not None:
            lines.append(str(self.verification))
        return "\n".join(lines)


Fetch = Callable[..., str]


def download(
    root: str | os.PathLike[str],
    endpoint: str | None = None,
    token: str | None = None,
    fetch: Fetch | None = None,
    spec: ReleaseSpec | None = None,
) -> DownloadReport:
    """Download the release into `root` (resumable: files already complete are skipped).

    `endpoint` points at a Hugging Face mirror; `fetch` replaces huggingface_hub's
    snapshot_download (same keyword arguments).
    """
    root = Path(root).expanduser()
    if fetch is None:
        from huggingface_hub import snapshot_download

        fetch = snapshot_download
    report = DownloadReport(root)
    for item in download_plan():
        local = root / item.local_dir
        try:
            fetch(
                repo_id=item.repo,
                allow_patterns=item.patterns,
                local_dir=local,
                endpoint=endpoint,
                token=token,
            )
        except Exception as exc:  # hub errors come in many types: network, auth, disk
            raise CheckpointError(
                f"downloading {item.repo} into {local} failed ({type(exc).__name__}: {exc}). "
                "This needs internet access to huggingface.co (or a mirror via endpoint / "
                "HF_ENDPOINT); on an offline machine copy the files in by hand, see "
                "checkpoints/README.md"
            ) from exc
        report.fetched[item.repo] = str(local)
    report.verification = verify(root, spec)
    return report
