"""The identity of a presenter: what a stream's open computes from its inputs alone.

A stream's text encoding, portrait latents, sink caches and primed decoder depend only on the
portrait's bytes, the prompt, the size key and the DiT's precision (and on the model, which
one engine fixes). `presenter_key` names that content, within a namespace the caller gives (a
tenant): the worker's presenter cache and the job row (`jobs.presenter_key`, for presenter
affinity in the claim) compute it here, the one place, from the same fields.

No torch: the API and the database import this.
"""

from __future__ import annotations

import hashlib
import json


def presenter_key(namespace: str, image_sha256: str, prompt: str, size: str, precision: str) -> str:
    """sha256 hex of (namespace, portrait digest, prompt digest, size key, precision).

    Different namespaces never give the same key, whatever the files: two tenants with the
    same portrait and prompt share nothing."""
    fields = {
        "namespace": namespace,
        "image_sha256": image_sha256,
        "prompt_sha256": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
        "size": size,
        "precision": precision,
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
