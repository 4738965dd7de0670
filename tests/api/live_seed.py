"""Resources on a running server for schemathesis to work on (tests/api/schemathesis.toml):
an image and an audio upload, a job and a batch made of them, a presenter, and a webhook. Prints them as
shell variables the configuration reads:

    eval "$(python -m tests.api.live_seed http://127.0.0.1:PORT "$KEY" http://127.0.0.1:9/hook)"

The webhook's URL must be one the server allows (LONGTAKE_WEBHOOK_ALLOWED_HOSTS for a
loopback one).
"""

from __future__ import annotations

import sys

import httpx

from tests import media


def seed(client: httpx.Client, webhook_url: str) -> dict[str, str]:
    """The resources, made through `client` (authenticated, with the server's base URL; the
    in-process tests pass their TestClient)."""

    def created(response: httpx.Response) -> str:
        if response.status_code not in (200, 201):
            raise SystemExit(f"{response.request.url}: {response.status_code} {response.text}")
        return response.json()["id"]

    image = created(
        client.post("/v1/uploads", files={"file": ("a.png", media.png())}, data={"kind": "image"})
    )
    audio = created(
        client.post(
            "/v1/uploads", files={"file": ("a.wav", media.wav(2.0))}, data={"kind": "audio"}
        )
    )
    job = {"prompt": "A presenter", "image": image, "audio": audio, "size": "64*64"}
    presenter = {"name": "anna", "prompt": "A presenter", "image": image, "size": "64*64"}
    response = client.post("/v1/presenters", json=presenter)
    if response.status_code not in (201, 409):  # 409: made by an earlier run
        raise SystemExit(f"{response.request.url}: {response.status_code} {response.text}")
    return {
        "LT_PRESENTER_NAME": "anna",
        "LT_UPLOAD_ID": image,
        "LT_JOB_ID": created(client.post("/v1/jobs", json=job)),
        "LT_BATCH_ID": created(client.post("/v1/batches", json={"jobs": [job]})),
        "LT_WEBHOOK_ID": created(client.post("/v1/webhooks", json={"url": webhook_url})),
    }


if __name__ == "__main__":
    base_url, key, webhook_url = sys.argv[1:4]
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        for name, value in seed(client, webhook_url).items():
            print(f"export {name}={value}")
