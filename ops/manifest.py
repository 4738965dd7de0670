"""What `longtake batch submit` sends: jobs read from a folder or a CSV/JSONL manifest.

A folder holds one job per audio file (WAV, MP3, M4A, FLAC). Its portrait is the image with
the same name (lesson-3.png beside lesson-3.wav), else `--image`, else the folder's only image;
its prompt is the text file with the same name (lesson-3.txt), else `--prompt`.

A manifest has one job per row (CSV with a header) or per line (JSONL): `image`, `audio` and
`prompt`, or `presenter` and `audio` (one of the tenant's presenters gives the portrait, prompt
and size), plus any job parameter (size, num_clips, seed, priority, webhook_url, ...). Instead
of `audio`, a row may give `script`, a UTF-8 text file the server speaks as the job's audio,
with `language` and `voice` (docs/speech.md). Paths are relative to the manifest; s3:// URIs
and upload ids (upl_...) are passed through as they are.

`--presenter NAME` gives every job that names no portrait (a folder's audio files, a row
without image or presenter) that presenter instead of `--image` and `--prompt`.

Local files are uploaded once each (the API stores identical bytes once), and the jobs refer
to their upload ids.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

AUDIO_EXTS = {".wav", ".mp3", ".m4a", ".flac"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp"}


class ManifestError(ValueError):
    """The folder or manifest cannot become a batch; the message says what to fix."""


def is_reference(value: str) -> bool:
    return value.startswith("s3://") or value.startswith("upl_")


def jobs_from_folder(
    folder: Path, *, image: Path | None, prompt: str | None, presenter: str | None = None
) -> list[dict]:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    audios = [p for p in files if p.suffix.lower() in AUDIO_EXTS]
    images = {p.stem: p for p in files if p.suffix.lower() in IMAGE_EXTS}
    if not audios:
        raise ManifestError(f"{folder} holds no audio files ({', '.join(sorted(AUDIO_EXTS))})")
    if presenter is not None:
        return [{"presenter": presenter, "audio": str(audio)} for audio in audios]
    only_image = next(iter(images.values())) if len(images) == 1 else None
    jobs = []
    for audio in audios:
        portrait = images.get(audio.stem) or image or only_image
        if portrait is None:
            raise ManifestError(
                f"no portrait for {audio.name}: add {audio.stem}.png beside it, or pass --image"
            )
        script = audio.with_suffix(".txt")
        text = script.read_text().strip() if script.is_file() else prompt
        if not text:
            raise ManifestError(
                f"no prompt for {audio.name}: add {script.name} beside it, or pass --prompt"
            )
        jobs.append({"image": str(portrait), "audio": str(audio), "prompt": text})
    return jobs


# CSV cells are text; the API takes typed JSON. These columns are text whatever they hold
# (a prompt of digits stays a prompt); any other cell is read as JSON when it is JSON (numbers,
# true/false, a watermark object) and as text otherwise.
TEXT_COLUMNS = frozenset(
    {"image", "audio", "prompt", "presenter", "size", "precision", "webhook_url",
     "webhook_secret", "script", "language", "voice", "speech_engine"}
)  # fmt: skip


def _cell(column: str, value: str) -> Any:
    if column in TEXT_COLUMNS:
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def jobs_from_manifest(path: Path, presenter: str | None = None) -> list[dict]:
    base = path.parent
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            rows = [
                {k: _cell(k, v) for k, v in row.items() if k and v not in (None, "")}
                for row in csv.DictReader(f)
            ]
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}:{n}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise ManifestError(f"{path}:{n}: each line must be a JSON object")
            rows.append(row)
    else:
        raise ManifestError(f"{path}: a manifest is a .csv or .jsonl file")
    if not rows:
        raise ManifestError(f"{path} lists no jobs")
    for n, row in enumerate(rows, 1):
        if row.get("audio") and row.get("script"):
            raise ManifestError(f"{path}: job {n} has both audio and a script; give one of them")
        for kind in ("image", "audio"):
            value = row.get(kind)
            if kind == "image" and not value and (row.get("presenter") or presenter):
                continue  # the presenter's portrait
            if not value:
                if kind == "audio" and row.get("script"):
                    continue
                also = " (nor a presenter)" if kind == "image" else " (or a script)"
                raise ManifestError(f"{path}: job {n} has no {kind}{also}")
            if not is_reference(value):
                row[kind] = str((base / value).resolve())
        if row.get("script"):
            row["script"] = _script_text(base / str(row["script"]), f"{path}: job {n}")
    return rows


def _script_text(path: Path, where: str) -> str:
    """The text of a script file, sent with the job for the server to speak."""
    if not path.is_file():
        raise ManifestError(f"{where}: the script {path} is not a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(
            f"{where}: the script {path} is not UTF-8 text (byte {e.start}); save it as UTF-8"
        ) from None


def read_jobs(
    source: Path, *, image: Path | None, prompt: str | None, presenter: str | None = None
) -> list[dict]:
    if presenter is not None and (image is not None or prompt is not None):
        raise ManifestError(
            "--presenter brings its own portrait and prompt: drop --image and --prompt"
        )
    if source.is_dir():
        return jobs_from_folder(source, image=image, prompt=prompt, presenter=presenter)
    if source.is_file():
        jobs = jobs_from_manifest(source, presenter)
        for job in jobs:
            if "image" in job or "presenter" in job:
                if prompt and "prompt" not in job and "presenter" not in job:
                    job["prompt"] = prompt
            elif presenter is not None:
                job["presenter"] = presenter
        return jobs
    raise ManifestError(f"{source} is neither a folder nor a manifest file")


def upload_local_files(
    jobs: list[dict], upload: Callable[[Path, str], dict[str, Any]]
) -> dict[str, str]:
    """Upload every distinct local file once; replace paths by upload ids in `jobs`.
    Returns {path: upload id}."""
    ids: dict[str, str] = {}
    for job in jobs:
        for kind in ("image", "audio"):
            value = job.get(kind)
            if value is None or is_reference(value):  # None: a presenter's or a script's
                continue
            if value not in ids:
                path = Path(value)
                if not path.is_file():
                    raise ManifestError(f"{path} is not a file")
                ids[value] = upload(path, kind)["id"]
            job[kind] = ids[value]
    return ids


def batch_key(body: dict[str, Any]) -> str:
    """An Idempotency-Key for the batch: sending the same batch again returns the first one."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return "batch-" + hashlib.sha256(canonical.encode()).hexdigest()[:48]
