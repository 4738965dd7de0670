"""The dashboard in a real browser (Debian's Chromium, headless, driven by Playwright) against
a real embedded service: SQLite, local storage, and the in-process runner rendering with the
tiny model on the CPU. Screenshots go to test-artifacts/dashboard/.

Chromium comes from the system (ops/dev/install-test-tools.sh, which `make test` runs), never
from Playwright's downloads. Without it these tests fail: they never skip.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import av
import httpx
import pytest
import sqlalchemy as sa

from db import leases
from db.failures import Failure
from ops.demo import portrait_png, synthesize_speech, wav_bytes

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREEN = {"width": 1366, "height": 768}  # a laptop screen
PHONE = {"width": 390, "height": 844}  # a phone held upright, in CSS pixels
FPS = 25


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run `bash ops/dev/install-test-tools.sh`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Watched:
    """A page whose script errors and failed console messages are collected."""

    def __init__(self, browser, base_url: str, **context):
        self.context = browser.new_context(**{"viewport": SCREEN, "base_url": base_url, **context})
        # waits end on conditions; this only bounds a failure, generously for a busy machine
        self.context.set_default_timeout(120_000)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))
        self.page.on(
            "console",
            lambda m: self.problems.append(f"console: {m.text}") if m.type == "error" else None,
        )

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / name), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Made once for the module (the tests only read them); the minute of speech only for
    the test that renders it."""
    folder = tmp_path_factory.mktemp("inputs")
    files = {"portrait": folder / "portrait.png", "brief": folder / "brief.wav",
             "short": folder / "short.wav"}  # fmt: skip
    files["portrait"].write_bytes(portrait_png(256, 256))
    files["brief"].write_bytes(wav_bytes(synthesize_speech(3.0)))
    files["short"].write_bytes(wav_bytes(synthesize_speech(6.0)))
    return files


@pytest.fixture
def long_speech(tmp_path: Path) -> Path:
    """Long enough that a job is still rendering when the test cancels it."""
    path = tmp_path / "long.wav"
    path.write_bytes(wav_bytes(synthesize_speech(60.0, seed=1)))
    return path


@pytest.fixture
def rendering_service(embedded_env, monkeypatch):
    """The embedded service with its default handler: the render lifecycle, tiny model, CPU."""
    monkeypatch.delenv("LONGTAKE_EMBEDDED_HANDLER")
    monkeypatch.setenv("LONGTAKE_TORCH_THREADS", "1")
    monkeypatch.setenv("LONGTAKE_PROGRESS_INTERVAL_S", "0.25")  # progress rows 4 times a second
    from ops.demo import free_port
    from ops.server import BackgroundServer, build
    from ops.settings import Settings

    port = free_port()
    settings = Settings(api_url=f"http://127.0.0.1:{port}")
    server = BackgroundServer(build(settings, embedded=True), "127.0.0.1", port)
    server.start()
    server.url = settings.api_url
    server.api_key = server.process.api_key_file.read_text().strip()
    yield server
    server.stop()


def detail_state(page) -> dict:
    return page.evaluate(
        """() => {
            const d = document.getElementById('detail');
            const bar = document.getElementById('detail-progress');
            return {job: d.dataset.jobId, status: d.dataset.status, stream: d.dataset.stream,
                    done: bar.hasAttribute('value') ? bar.value : null, total: bar.max};
        }"""
    )


RECORD = """() => {
    // every state the job's panel shows, as it changes (not sampled: none is missed)
    window.seenStates = [];
    const d = document.getElementById('detail');
    const bar = document.getElementById('detail-progress');
    const note = () => {
        const s = {job: d.dataset.jobId, status: d.dataset.status, stream: d.dataset.stream,
                   done: bar.hasAttribute('value') ? bar.value : null, total: bar.max};
        const last = window.seenStates[window.seenStates.length - 1];
        if (JSON.stringify(last) !== JSON.stringify(s)) window.seenStates.push(s);
    };
    new MutationObserver(note).observe(d, {attributes: true, subtree: true});
    note();
}"""


PLAY = """async (id) => {
    const v = document.getElementById(id);
    v.muted = true;  // autoplay rules allow muted playback without a gesture
    await v.play();
    // until the first frame has played (a minute bounds a failure on a busy machine)
    await new Promise((resolve) => {
        const check = () => { if (v.currentTime > 0 || v.error) resolve(); };
        v.addEventListener('timeupdate', check);
        v.addEventListener('error', check);
        setTimeout(resolve, 60000);
        check();
    });
    return {readyState: v.readyState, duration: v.duration, currentTime: v.currentTime,
            width: v.videoWidth, height: v.videoHeight, error: v.error && v.error.message};
}"""


def fill_form(page, image: Path, audio: Path, *, checkpoint_every: int) -> None:
    page.get_by_label("Portrait", exact=True).set_input_files(image)
    page.get_by_label("Speech").set_input_files(audio)
    page.get_by_label("Prompt", exact=True).fill(
        "A presenter in a blue sweater speaks to the camera."
    )
    page.get_by_label("Size", exact=True).select_option("64*64")
    page.get_by_label("Frames per clip").select_option("12")
    if page.locator("details.more").get_attribute("open") is None:
        page.get_by_text("More settings").click()
    page.get_by_label("Checkpoint every").fill(str(checkpoint_every))


@pytest.mark.slow
def test_submit_watch_play_and_cancel_through_the_page(
    browser, rendering_service, inputs, long_speech
):
    server = rendering_service
    watched = Watched(browser, server.url)
    page = watched.page
    streams: list[dict] = []
    page.on(
        "request",
        lambda r: streams.append(r.headers) if r.url.endswith("/events") else None,
    )
    try:
        # sign in: a wrong key is refused, the right one opens the workspace
        page.goto("/")
        page.get_by_label("API key").fill("lt_nope_nope")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_text("That key is unknown or was revoked.").wait_for()
        assert [p for p in watched.problems if "401" not in p] == []  # Chromium logs the 401
        watched.problems.clear()
        page.get_by_label("API key").fill(server.api_key)
        page.get_by_role("button", name="Sign in").click()
        page.locator("#workspace").wait_for()
        watched.screenshot("1-signed-in.png")

        # submit a job through the form: 3 s of speech is 7 clips of 12 frames
        fill_form(page, inputs["portrait"], inputs["brief"], checkpoint_every=4)
        page.get_by_text("7 clips of 12 frames").wait_for()
        page.get_by_role("button", name="Render").click()
        page.locator("#detail[data-job-id][data-stream=open]").wait_for()
        first = detail_state(page)["job"]

        # progress moves on the page while the job renders, fed by the event stream
        page.evaluate(RECORD)
        page.locator("#detail[data-status=succeeded]").wait_for()
        seen = page.evaluate("window.seenStates")
        assert seen[-1]["status"] == "succeeded", seen
        assert seen[-1]["done"] == seen[-1]["total"] == 7
        moving = [s for s in seen if s["status"] == "running" and 0 < (s["done"] or 0) < 7]
        assert moving, f"no progress between the first and the last clip was shown: {seen}"
        assert all(s["stream"] == "open" for s in moving)
        shown = [s["done"] for s in seen if s["done"] is not None]
        assert shown == sorted(shown), f"progress went backwards: {seen}"
        assert streams and streams[0]["accept"] == "text/event-stream"
        assert streams[0]["authorization"] == f"Bearer {server.api_key}"
        assert page.locator("#event-rows tr[data-event=progress]").count() >= 2
        assert page.locator("#event-rows tr[data-event=succeeded]").count() == 1

        # the finished video plays in the page, and the download link is the result URL
        page.locator("#output video").wait_for()
        played = page.evaluate(PLAY, "output-video")
        assert played["error"] is None and played["readyState"] >= 2, played
        # 7 clips are rendered; the video ends with the 3 s of speech
        assert played["duration"] == pytest.approx(3.0, abs=0.05), played
        assert played["currentTime"] > 0 and (played["width"], played["height"]) == (64, 64)
        headers = {"Authorization": f"Bearer {server.api_key}"}
        result = httpx.get(f"{server.url}/v1/jobs/{first}/result", headers=headers).json()
        href = page.get_by_role("link", name="Download video").get_attribute("href")
        assert href.split("?")[0] == result["url"].split("?")[0]
        video = httpx.get(href)  # a signed link: no key needed
        assert hashlib.sha256(video.content).hexdigest() == result["output"]["sha256"]
        with av.open(io.BytesIO(video.content)) as container:  # what Chromium just played
            codecs = {s.type: s.codec_context.name for s in container.streams}
        assert codecs == {"video": "h264", "audio": "aac"}
        assert (
            page.locator("#announcer").inner_text()
            == f"Job {first[:8]} succeeded; its video is ready."
        )
        watched.screenshot("2-succeeded.png")

        # a second, long job: watch its first segments while it renders, then cancel it
        fill_form(page, inputs["portrait"], long_speech, checkpoint_every=1)
        page.get_by_role("button", name="Render").click()
        page.wait_for_function(
            "(first) => { const id = document.getElementById('detail').dataset.jobId;"
            " return id && id !== first; }",
            arg=first,
        )
        second = detail_state(page)["job"]
        page.locator("#segment-list li").first.wait_for()
        segment = page.evaluate(PLAY, "segment-video")
        assert segment["error"] is None and segment["readyState"] >= 2, segment
        assert segment["duration"] == pytest.approx(12 / FPS, abs=0.05), segment
        assert page.locator("#detail").get_attribute("data-status") == "running"
        watched.screenshot("3-segments-while-rendering.png")

        page.get_by_role("button", name="Cancel", exact=True).click()
        page.locator("#detail[data-status=canceled]").wait_for()
        row = page.locator(f"#job-rows tr[data-job-id='{second}']")
        row.locator(".badge", has_text="Canceled").wait_for()
        assert page.get_by_role("button", name="Retry", exact=True).is_visible()
        job = httpx.get(f"{server.url}/v1/jobs/{second}", headers=headers).json()
        assert job["status"] == "canceled" and job["progress"]["clips_done"] < 125
        assert page.locator("#announcer").inner_text() == f"Job {second[:8]} was canceled."
        watched.screenshot("4-canceled.png")

        # both jobs are listed, newest first; from the keyboard, a row opens its job and the
        # focus follows
        ids = page.locator("#job-rows tr").evaluate_all("rows => rows.map(r => r.dataset.jobId)")
        assert ids == [second, first]
        page.get_by_role("button", name=f"Show job {first[:8]}").focus()
        page.keyboard.press("Enter")
        page.locator(f"#detail[data-job-id='{first}'][data-status=succeeded]").wait_for()
        assert page.evaluate("document.activeElement.id") == "detail-title"
        page.locator("#output:not([hidden])").wait_for()

        # a reload keeps the tab signed in and the job open (its id is in the address)
        page.reload()
        page.locator(f"#detail[data-job-id='{first}'][data-status=succeeded]").wait_for()
        assert page.locator("#sign-in").is_hidden()
        assert watched.problems == []
    finally:
        watched.close()


def test_bad_input_is_explained_at_its_field(browser, embedded_service, inputs, tmp_path):
    """What the browser can check is checked before uploading; what only the server can (the
    image decodes) comes back as the API's message, on the field it names."""
    watched = Watched(browser, embedded_service.url)
    page = watched.page
    try:
        page.goto("/")
        page.get_by_label("API key").fill(embedded_service.api_key)
        page.get_by_role("button", name="Sign in").click()
        page.locator("#workspace").wait_for()

        page.get_by_label("Portrait", exact=True).set_input_files(inputs["portrait"])
        page.get_by_label("Prompt", exact=True).fill("A presenter speaks.")
        page.get_by_role("button", name="Render").click()
        assert page.locator("#submit-error").inner_text() == "Choose a speech file."
        assert page.get_by_label("Speech").get_attribute("aria-invalid") == "true"
        assert page.evaluate("document.activeElement.id") == "audio-input"

        not_an_image = tmp_path / "scan.png"
        not_an_image.write_text("this is not a picture")
        page.get_by_label("Portrait", exact=True).set_input_files(not_an_image)
        page.locator("#image-info").get_by_text("this browser cannot show it").wait_for()
        # a message stays until what it is about changes
        assert page.locator("#submit-error").inner_text() == "Choose a speech file."
        page.get_by_label("Speech").set_input_files(inputs["short"])
        assert page.locator("#submit-error").is_hidden()
        assert page.get_by_label("Speech").get_attribute("aria-invalid") is None
        page.get_by_role("button", name="Render").click()
        error = page.locator("#submit-error")
        error.filter(has_text="Not submitted").wait_for()
        assert "image" in error.inner_text()
        assert page.get_by_label("Portrait", exact=True).get_attribute("aria-invalid") == "true"
        assert page.get_by_label("Speech").get_attribute("aria-invalid") is None
        with embedded_service.process.database.transaction() as s:
            assert s.scalar(sa.text("SELECT count(*) FROM jobs")) == 0  # nothing was queued
        assert page.locator("#job-rows tr").count() == 0
        watched.screenshot("5-bad-input.png")

        # another file is chosen: the server's word on the first one no longer stands
        page.get_by_label("Portrait", exact=True).set_input_files(inputs["portrait"])
        assert page.locator("#submit-error").inner_text() == ""
        assert page.get_by_label("Portrait", exact=True).get_attribute("aria-invalid") is None

        # signing out leaves nothing behind: not the key, not the chosen files
        key_id = embedded_service.api_key.split("_")[1]
        assert page.locator("#server-note").inner_text() == f"Signed in with key_{key_id}."
        page.get_by_role("button", name="Sign out").click()
        page.locator("#sign-in").wait_for()
        assert page.locator("#workspace").is_hidden()
        assert page.evaluate("sessionStorage.length") == 0
        assert page.evaluate("document.getElementById('image-input').files.length") == 0
        assert page.locator("#image-info").inner_text() == ""
        page.reload()
        page.locator("#sign-in").wait_for()  # the key went with the session
        assert [p for p in watched.problems if "422" not in p] == []
    finally:
        watched.close()


def test_the_event_stream_reader_handles_any_chunking(browser, embedded_service):
    """The page's SSE parser (api/static/sse.js), run in the browser on the text a stream
    sends, cut at every position: the same messages whatever the chunks."""
    watched = Watched(browser, embedded_service.url)
    try:
        watched.page.goto("/")
        stream = (
            "retry: 2000\r\n\r\n"
            ': keepalive\n\nid: 7\nevent: progress\ndata: {"id":7}\n\n'
            'event: job\ndata: {"status":\ndata:  "running"}\n\n'
            "id: 8\r\nevent: segment\r\ndata: {}\r\n\r\n"
            "id: 9\rdata:x\r\r"
            "event: ignored-without-data\n\n"
        )
        result = watched.page.evaluate(
            """async (stream) => {
                const { SseParser } = await import('/dashboard/sse.js');
                const runs = [];
                for (let cut = 0; cut <= stream.length; cut++) {
                    const parser = new SseParser();
                    const got = [...parser.push(stream.slice(0, cut)),
                                 ...parser.push(stream.slice(cut))];
                    runs.push(JSON.stringify({got, last: parser.lastEventId, retry: parser.retry}));
                }
                const oneByOne = new SseParser();
                const chars = [...stream].flatMap((c) => oneByOne.push(c));
                return {distinct: [...new Set(runs)], chars: JSON.stringify(
                    {got: chars, last: oneByOne.lastEventId, retry: oneByOne.retry})};
            }""",
            stream,
        )
        assert len(result["distinct"]) == 1
        assert result["chars"] == result["distinct"][0]
        parsed = json.loads(result["distinct"][0])
        assert parsed["got"] == [
            {"id": "7", "event": "progress", "data": '{"id":7}'},
            {"id": "7", "event": "job", "data": '{"status":\n "running"}'},
            {"id": "8", "event": "segment", "data": "{}"},
            {"id": "9", "event": "message", "data": "x"},
        ]
        assert (parsed["last"], parsed["retry"]) == ("9", 2000)
        assert watched.problems == []
    finally:
        watched.close()


def test_files_can_be_dropped_on_their_fields(browser, embedded_service, inputs):
    watched = Watched(browser, embedded_service.url)
    page = watched.page
    try:
        page.goto("/")
        page.get_by_label("API key").fill(embedded_service.api_key)
        page.get_by_role("button", name="Sign in").click()
        page.locator("#workspace").wait_for()
        for zone, path, kind in (
            ("#image-drop", inputs["portrait"], "image/png"),
            ("#audio-drop", inputs["short"], "audio/wav"),
        ):
            dropped = page.evaluate_handle(
                """([b64, name, kind]) => {
                    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                    const files = new DataTransfer();
                    files.items.add(new File([bytes], name, { type: kind }));
                    return files;
                }""",
                [base64.b64encode(path.read_bytes()).decode(), f"dropped-{path.name}", kind],
            )
            page.dispatch_event(zone, "dragover", {"dataTransfer": dropped})
            assert "dragging" in page.locator(zone).get_attribute("class")
            page.dispatch_event(zone, "drop", {"dataTransfer": dropped})
            assert "dragging" not in page.locator(zone).get_attribute("class")
        assert page.evaluate("document.getElementById('image-input').files[0].name") == (
            "dropped-portrait.png"
        )
        page.locator("#image-info").get_by_text("256 × 256 px").wait_for()
        page.locator("#audio-info").get_by_text("dropped-short.wav · 6.0 s").wait_for()
        page.get_by_text("as long as the speech, 4 clips of 48 frames").wait_for()
        assert watched.problems == []
    finally:
        watched.close()


FOLLOW = """async ({ bodies, status }) => {
    const { Api } = await import('/dashboard/api.js');
    const { EventFollower } = await import('/dashboard/sse.js');
    const calls = [];
    // the network: each connection answers the next body, then closes
    window.fetch = async (url, init) => {
        calls.push({ url: String(url), headers: init.headers });
        const body = bodies[calls.length - 1];
        if (body === undefined) throw new TypeError('network error');
        return new Response(body, { status, headers: { 'content-type': 'text/event-stream' } });
    };
    const seen = { events: [], jobs: [], states: [] };
    await new Promise((resolve) => {
        const follower = new EventFollower(new Api('lt_k1_secret'), 'job-1', {
            onEvent: (e) => seen.events.push(e.id),
            onJob: (j) => seen.jobs.push(j.status),
            onState: (s) => {
                seen.states.push(s);
                if (s === 'ended' || s === 'failed') resolve();
            },
        });
        follower.start();
        setTimeout(() => { follower.close(); resolve(); }, 60000);  // bounds a failure
    });
    return { calls, ...seen };
}"""


def test_a_broken_event_stream_resumes_after_its_last_event(browser, embedded_service):
    """The stream drops after event 2: the page reconnects with Last-Event-ID: 2, gets the
    rest once, and stops when the job is final. A missing job is not asked for again."""
    watched = Watched(browser, embedded_service.url)
    try:
        watched.page.goto("/")
        first = (
            "retry: 10\n\n"
            'id: 1\nevent: created\ndata: {"id":1}\n\nevent: job\ndata: {"status":"queued"}\n\n'
            'id: 2\nevent: claimed\ndata: {"id":2}\n\nevent: job\ndata: {"status":"running"}\n\n'
        )
        rest = 'id: 3\nevent: succeeded\ndata: {"id":3}\n\nevent: job\ndata: {"status":"succeeded"}\n\n'
        seen = watched.page.evaluate(FOLLOW, {"bodies": [first, rest], "status": 200})
        assert [c["url"] for c in seen["calls"]] == [
            f"{embedded_service.url}/v1/jobs/job-1/events"
        ] * 2
        for call in seen["calls"]:
            assert call["headers"]["Authorization"] == "Bearer lt_k1_secret"
            assert call["headers"]["Accept"] == "text/event-stream"
        assert "Last-Event-ID" not in seen["calls"][0]["headers"]
        assert seen["calls"][1]["headers"]["Last-Event-ID"] == "2"
        assert seen["events"] == [1, 2, 3]
        assert seen["jobs"] == ["queued", "running", "succeeded"]
        assert seen["states"] == [
            "connecting",
            "open",
            "reconnecting",
            "open",
            "ended",
        ]

        missing = watched.page.evaluate(
            FOLLOW,
            {"bodies": ['{"error": {"code": "job_not_found", "message": "no"}}'], "status": 404},
        )
        assert len(missing["calls"]) == 1 and missing["states"] == ["connecting", "failed"]
        assert watched.problems == []
    finally:
        watched.close()


def test_a_server_without_keys_opens_straight_into_the_workspace(
    browser, embedded_env, monkeypatch
):
    monkeypatch.setenv("LONGTAKE_AUTH", "off")
    from ops.demo import free_port
    from ops.server import BackgroundServer, build
    from ops.settings import Settings

    port = free_port()
    settings = Settings(api_url=f"http://127.0.0.1:{port}")
    server = BackgroundServer(build(settings, embedded=True), "127.0.0.1", port)
    server.start()
    watched = Watched(browser, settings.api_url)
    try:
        watched.page.goto("/")
        watched.page.locator("#workspace").wait_for()
        assert watched.page.locator("#sign-in").is_hidden()
        assert (
            watched.page.locator("#server-note").inner_text() == "API keys are off on this server."
        )
        assert watched.page.get_by_role("button", name="Sign out").is_hidden()
        watched.page.locator("#jobs-empty").wait_for(state="visible")  # once the list is read
        assert watched.problems == []
    finally:
        watched.close()
        server.stop()


BOXES = """(selectors) => selectors.map((selector) => {
    const r = document.querySelector(selector).getBoundingClientRect();
    return {selector, left: r.left, right: r.right, top: r.top, width: r.width};
})"""
PROMPT = (
    "A presenter in a blue sweater explains the quarter's results to the camera, in a bright "
    "studio with plants and a window behind her, calm and friendly, natural head movement."
)
OUT_OF_MEMORY = (
    "the GPU ran out of memory at this size; submit the job again at a smaller size, or ask "
    "the operator for a larger GPU"
)
UNRENDERABLE = (
    "the job's inputs cannot be rendered (audio is not decodable); submit it again with inputs "
    "that can"
)
TRACEBACK = (
    "Traceback (most recent call last):\n  File "
    '"/srv/longtake/.venv/lib/python3.12/site-packages/longtake_worker_internals/'
    'render_lifecycle_with_a_very_long_module_name.py", line 412, in run\n'
    "RuntimeError: CUDA out of memory"
)


def sign_in(page, key: str, path: str = "/") -> None:
    page.goto(path)
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#workspace").wait_for()


def sideways(page, selectors: list[str]) -> list[dict]:
    """The elements (of `selectors`) not wholly inside the viewport's width."""
    width = page.evaluate("window.innerWidth")
    boxes = page.evaluate(BOXES, selectors)
    return [b for b in boxes if b["width"] == 0 or b["left"] < 0 or b["right"] > width]


def test_on_a_phone_everything_is_within_reach(browser, embedded_service, inputs):
    """390×844: no page or panel overflows sideways (Close, status and Retry on screen), a
    job opened from a link is scrolled into view, the jobs are listed on the page rather
    than in a short box of their own, and times say which day."""
    from api.client import LongtakeClient

    server = embedded_service
    with LongtakeClient(server.url, api_key=server.api_key) as client:
        image = client.upload(inputs["portrait"], "image")["id"]
        audio = client.upload(inputs["short"], "audio")["id"]
        jobs = [{"prompt": PROMPT, "image": image, "audio": audio}] * 14
        batch = client.create_batch({"jobs": jobs, "defaults": {"size": "64*64"}})
        ids = [j["id"] for j in client.list(limit=50)["jobs"]]
        assert len(ids) == 14 and batch["jobs_total"] == 14
        canceled, failed, unrenderable = ids[-1], ids[-2], ids[-3]  # the oldest: at the end
        client.cancel(canceled)
    database = server.process.database
    with database.transaction() as s:
        lease = leases.claim(s, uuid.UUID(failed), "w", 60)
        leases.mark_failed(s, lease, Failure(OUT_OF_MEMORY, "render", TRACEBACK))
        lease = leases.claim(s, uuid.UUID(unrenderable), "w", 60)
        leases.mark_failed(s, lease, Failure(UNRENDERABLE, "input", TRACEBACK))

    watched = Watched(browser, server.url, viewport=PHONE, is_mobile=True, has_touch=True,
                      locale="en-GB", timezone_id="UTC")  # fmt: skip
    page = watched.page
    try:
        # a link to a job: once signed in, the job is open and on screen
        sign_in(page, server.api_key, f"/#job={canceled}")
        page.locator(f"#detail[data-job-id='{canceled}'][data-status=canceled]").wait_for()
        page.locator(f"#job-rows tr[data-job-id='{canceled}'] .badge").wait_for()
        page.locator("#event-rows tr[data-event=canceled]").wait_for()
        top = page.evaluate("document.getElementById('detail').getBoundingClientRect().top")
        assert 0 <= top < PHONE["height"] / 2, top
        assert page.evaluate("document.activeElement.id") == "detail-title"
        watched.screenshot("6-phone-linked-job.png")

        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        row = f"#job-rows tr[data-job-id='{canceled}']"
        assert sideways(page, ["#close-detail", "#detail-status", "#retry-job",
                               f"{row} .badge", f"{row} .row-actions button",
                               f"{row} button.link"]) == []  # fmt: skip
        overflowing = page.evaluate(
            """() => [...document.querySelectorAll('#workspace *')]
                .filter((e) => e.scrollWidth > e.clientWidth + 1
                               && ['auto', 'scroll'].includes(getComputedStyle(e).overflowX))
                .map((e) => e.id || e.className || e.tagName)"""
        )
        assert overflowing == [], "boxes that scroll sideways on a phone"

        # the jobs are part of the page: no inner box with its own scroll bar
        scroll_box = page.evaluate(
            """() => { const box = document.querySelector('#jobs .table-scroll');
                       return [box.scrollHeight, box.clientHeight]; }"""
        )
        assert scroll_box[0] <= scroll_box[1] + 1, scroll_box
        assert page.locator("#job-rows tr").count() == 14

        # times carry their date (the page is in en-GB, in UTC)
        with LongtakeClient(server.url, api_key=server.api_key) as client:
            created = datetime.fromisoformat(client.get(canceled)["created_at"])
        day = f"{created.day} {created:%b}"
        assert day in page.locator(f"{row} time").inner_text()
        assert day in page.locator("#event-rows tr time").first.inner_text()

        # a failed job's error wraps within the panel
        page.get_by_role("button", name=f"Show job {failed[:8]}").click()
        page.locator(f"#detail[data-job-id='{failed}'][data-status=failed]").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        assert sideways(page, ["#close-detail", "#detail-status", "#retry-job",
                               "#detail-error"]) == []  # fmt: skip
        error = page.evaluate(
            "(() => { const e = document.getElementById('detail-error');"
            " return [e.scrollWidth, e.clientWidth]; })()"
        )
        assert error[0] <= error[1], error
        # the owner reads what went wrong and what to do; the traceback is the operator's
        shown = page.locator("#detail-error").inner_text()
        assert "smaller size" in shown and "Traceback" not in shown and "/srv/" not in shown
        assert page.locator("#retry-job").is_visible()  # a retry may help this one
        watched.screenshot("7-phone-failed-job.png")

        # a job that cannot render as submitted: no Retry, and the message says what to do
        page.get_by_role("button", name=f"Show job {unrenderable[:8]}").click()
        page.locator(f"#detail[data-job-id='{unrenderable}'][data-status=failed]").wait_for()
        assert "submit it again" in page.locator("#detail-error").inner_text()
        assert page.locator("#retry-job").is_hidden()
        unrenderable_row = f"#job-rows tr[data-job-id='{unrenderable}']"
        assert page.locator(f"{unrenderable_row} .row-actions button").count() == 0
        assert watched.problems == []
    finally:
        watched.close()


def test_counts_read_as_words(browser, embedded_service):
    """One clip is "1 clip" on the page, as in the CLI."""
    watched = Watched(browser, embedded_service.url)
    try:
        watched.page.goto("/")
        said = watched.page.evaluate(
            """async () => {
                const f = await import('/dashboard/format.js');
                const job = (status, total) => ({ status, cancel_requested: false,
                    progress: { clips_done: 0, clips_total: total, last_checkpoint_clip: null } });
                return [f.count(1, 'clip'), f.count(2, 'clip'), f.count(0, 'clip'),
                        f.progressText(job('queued', 1)), f.progressText(job('stitching', 1)),
                        f.eventDetails({ event: 'segment', data: { index: 0, frames: 1, bytes: 9 } })];
            }"""
        )
        assert said == ["1 clip", "2 clips", "0 clips", "1 clip, waiting",
                        "the clip is rendered, stitching", "segment 1: 1 frame, 9 bytes"]  # fmt: skip
        assert watched.problems == []
    finally:
        watched.close()


def test_presenters_are_made_used_and_deleted_through_the_page(browser, embedded_service, inputs):
    """A presenter made in the Presenters panel is offered by the job form, which then sends
    no portrait, prompt or size of its own; a refused one is explained at its field."""
    watched = Watched(browser, embedded_service.url)
    page = watched.page
    headers = {"Authorization": f"Bearer {embedded_service.api_key}"}
    try:
        sign_in(page, embedded_service.api_key)
        page.locator("#presenters-empty").wait_for()
        page.get_by_text("New presenter").click()
        page.get_by_role("button", name="Save presenter").click()
        assert "Name it with letters" in page.locator("#presenter-error").inner_text()
        assert page.evaluate("document.activeElement.id") == "presenter-name"

        def save(name: str) -> None:
            page.get_by_label("Presenter name").fill(name)
            page.get_by_label("Presenter portrait").set_input_files(inputs["portrait"])
            page.get_by_label("Presenter prompt").fill("A teacher at a whiteboard.")
            page.get_by_label("Presenter size").select_option("64*64")
            page.get_by_role("button", name="Save presenter").click()

        save("anna")
        page.locator('#presenter-list li[data-presenter="anna"]').wait_for()
        assert (
            "64 × 64 · A teacher at a whiteboard." in page.locator("#presenter-list").inner_text()
        )
        assert page.get_by_label("Presenter name").input_value() == ""  # ready for the next
        save("anna")  # the API refuses the same name: its message, at the field it names
        page.locator("#presenter-error").filter(has_text="Not saved").wait_for()
        assert "already" in page.locator("#presenter-error").inner_text()
        assert page.get_by_label("Presenter name").get_attribute("aria-invalid") == "true"

        # the job form offers it; choosing it puts the job's own portrait, prompt, size away
        choice = page.get_by_label("Presenter", exact=True)
        assert choice.locator("option").all_inner_texts()[1] == "anna (64 × 64)"
        choice.select_option("anna")
        for block in ("#image-drop", "#prompt-block", "#size-block"):
            assert page.locator(block).is_hidden(), block
        page.get_by_label("Speech").set_input_files(inputs["brief"])
        page.get_by_label("Frames per clip").select_option("12")
        page.get_by_role("button", name="Render").click()
        page.locator("#job-rows tr").first.wait_for()
        page.locator("#detail-prompt").filter(has_text="A teacher at a whiteboard.").wait_for()
        watched.screenshot("8-presenters.png")
        jobs = httpx.get(f"{embedded_service.url}/v1/jobs", headers=headers).json()["jobs"]
        (job,) = jobs
        assert job["presenter"] == "anna"
        assert (job["params"]["size"], job["params"]["infer_frames"]) == ("64*64", 12)
        row = page.locator(f'#job-rows tr[data-job-id="{job["id"]}"]')
        assert "anna: A teacher at a whiteboard." in row.inner_text()  # who, in the list
        page.locator("#facts summary").click()
        assert "Presenter\nanna" in page.locator("#detail-facts").inner_text()

        page.get_by_role("button", name="Delete presenter anna").click()
        page.locator("#presenters-empty").wait_for()
        assert choice.locator("option").count() == 1 and choice.input_value() == ""
        assert page.locator("#image-drop").is_visible()  # its own fields are back
        assert httpx.get(f"{embedded_service.url}/v1/presenters", headers=headers).json() == {
            "presenters": [], "next_cursor": None,
        }  # fmt: skip
        assert [p for p in watched.problems if "409" not in p] == []
    finally:
        watched.close()


SCRIPT = "Welcome back.\nToday: adding fractions, step by step."


def choose_script(page) -> None:
    """The speech from a script: its fields in place of the audio file's, once the
    languages and voices have loaded."""
    page.get_by_label("A script to speak").check()
    assert page.locator("#audio-drop").is_hidden()
    page.locator("#script-block").wait_for()
    page.locator("#language option").first.wait_for(state="attached")


def test_a_script_is_sent_from_the_form_with_a_portrait_or_a_presenter(
    browser, embedded_service, inputs
):
    """The form's script, language and voice (from GET /v1/voices) make a job that carries
    the script, whether the job has its own portrait or names a presenter; no audio is sent."""
    headers = {"Authorization": f"Bearer {embedded_service.api_key}"}
    made = httpx.post(
        f"{embedded_service.url}/v1/presenters",
        headers=headers,
        data={"name": "anna", "prompt": "A teacher at a whiteboard.", "size": "64*64"},
        files={"image": ("portrait.png", inputs["portrait"].read_bytes(), "image/png")},
    )
    assert made.status_code == 201, made.text
    watched = Watched(browser, embedded_service.url)
    page = watched.page
    try:
        sign_in(page, embedded_service.api_key)
        page.get_by_label("Portrait", exact=True).set_input_files(inputs["portrait"])
        # a file chosen first is set aside: the API refuses a script with audio as well
        page.get_by_label("Speech").set_input_files(inputs["brief"])
        page.get_by_label("Prompt", exact=True).fill("A presenter in a blue sweater.")
        page.get_by_label("Size", exact=True).select_option("64*64")
        choose_script(page)
        # the engine's default language where it is English, and its default voice
        language, voice = page.get_by_label("Language"), page.get_by_label("Voice")
        assert (language.input_value(), voice.input_value()) == ("en-us", "default")
        offered = httpx.get(f"{embedded_service.url}/v1/voices", headers=headers).json()
        (engine,) = [e for e in offered["engines"] if e["default"]]
        assert (
            language.locator("option").evaluate_all("options => options.map(o => o.value)")
            == engine["languages"]
        )
        language.select_option("en-gb")
        voice.select_option("m3")
        page.get_by_label("Script", exact=True).fill(SCRIPT)
        assert page.locator("#script-count").inner_text().startswith(f"{len(SCRIPT)} of ")
        page.get_by_role("button", name="Render").click()
        page.locator("#detail[data-job-id]").wait_for()
        first = detail_state(page)["job"]
        page.locator("#facts summary").click()
        page.locator("#detail-facts dd.script").filter(has_text="adding fractions").wait_for()
        assert page.locator("#detail-facts dd.script").inner_text() == SCRIPT
        job = httpx.get(f"{embedded_service.url}/v1/jobs/{first}", headers=headers).json()
        assert job["params"]["script"] == {
            "text": SCRIPT, "language": "en-gb", "voice": "m3", "engine": engine["name"],
        }  # fmt: skip
        assert job["presenter"] is None and job["params"]["size"] == "64*64"
        watched.screenshot("9-script-job.png")

        # the same script with a presenter; another language keeps the voice where it can
        page.get_by_label("Presenter", exact=True).select_option("anna")
        language.select_option("de")
        assert voice.input_value() == "m3"
        page.get_by_label("Script", exact=True).fill("Guten Morgen.")
        page.get_by_role("button", name="Render").click()
        page.wait_for_function(
            "(first) => { const id = document.getElementById('detail').dataset.jobId;"
            " return id && id !== first; }",
            arg=first,
        )
        second = detail_state(page)["job"]
        job = httpx.get(f"{embedded_service.url}/v1/jobs/{second}", headers=headers).json()
        assert job["presenter"] == "anna"
        assert job["params"]["script"] == {
            "text": "Guten Morgen.", "language": "de", "voice": "m3", "engine": engine["name"],
        }  # fmt: skip
        page.locator("#detail-prompt").filter(has_text="A teacher at a whiteboard.").wait_for()
        assert page.locator("#job-rows tr").count() == 2
        assert watched.problems == []
    finally:
        watched.close()


def test_a_refused_script_is_explained_at_its_field(browser, embedded_service, inputs):
    """An empty script is caught in the browser; what only the server checks (a control
    character, a language its engine does not speak) comes back as the API's message, on the
    field it names, and no job is made."""
    watched = Watched(browser, embedded_service.url)
    page = watched.page
    try:
        sign_in(page, embedded_service.api_key)
        page.get_by_label("Portrait", exact=True).set_input_files(inputs["portrait"])
        page.get_by_label("Prompt", exact=True).fill("A presenter speaks.")
        choose_script(page)
        script = page.get_by_label("Script", exact=True)
        page.get_by_role("button", name="Render").click()
        assert page.locator("#submit-error").inner_text() == "Write the script: the words to speak."
        assert script.get_attribute("aria-invalid") == "true"
        assert page.evaluate("document.activeElement.id") == "script"

        script.fill("Hello\u0007 there.")
        assert script.input_value() == "Hello\u0007 there."
        assert page.locator("#submit-error").is_hidden()  # the script changed
        page.get_by_role("button", name="Render").click()
        error = page.locator("#submit-error")
        error.filter(has_text="Not submitted").wait_for()
        assert "U+0007" in error.inner_text(), error.inner_text()
        assert script.get_attribute("aria-invalid") == "true"
        assert page.evaluate("document.activeElement.id") == "script"

        # a language the page was not offered (an engine upgraded under it): the API names it
        script.fill("Hello there.")
        page.evaluate(
            """() => { const s = document.getElementById('language');
                       s.append(new Option('xx', 'xx')); s.value = 'xx'; }"""
        )
        page.get_by_role("button", name="Render").click()
        error.filter(has_text="Not submitted").wait_for()
        assert "does not speak 'xx'" in error.inner_text(), error.inner_text()
        assert page.get_by_label("Language").get_attribute("aria-invalid") == "true"
        assert script.get_attribute("aria-invalid") is None

        with embedded_service.process.database.transaction() as s:
            assert s.scalar(sa.text("SELECT count(*) FROM jobs")) == 0  # nothing was queued
        assert page.locator("#job-rows tr").count() == 0
        assert [p for p in watched.problems if "422" not in p] == []
    finally:
        watched.close()
