"""The dashboard's files: served at / without a key, everything they load served here too
(nothing from another origin), every control labelled, the form's choices the API's own."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import pytest
from fastapi.testclient import TestClient

from api import create_app
from api.config import ApiConfig, InputLimits
from api.dashboard import STATIC_DIR
from api.services import Services
from pipeline import params as P

STATIC_FILES = sorted(p for p in STATIC_DIR.rglob("*") if p.is_file())
SCRIPTS = [p for p in STATIC_FILES if p.suffix == ".js"]
INDEX = STATIC_DIR / "index.html"


@pytest.fixture
def client(sqlite_db, local_storage):
    services = Services(config=ApiConfig(), database=sqlite_db, storage=local_storage)
    with TestClient(create_app(services)) as client:  # no Authorization header
        yield client


class Page(HTMLParser):
    """The parts of index.html that the checks below need."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.label_for: set[str] = set()
        self.text_of: dict[int, str] = {}  # element index -> its text, for buttons
        self._open: list[int] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag == "label" and dict(attrs).get("for"):
            self.label_for.add(dict(attrs)["for"])
        if tag in ("button", "summary"):
            self._open.append(len(self.elements) - 1)

    def handle_endtag(self, tag):
        if tag in ("button", "summary") and self._open:
            self._open.pop()

    def handle_data(self, data):
        for i in self._open:
            self.text_of[i] = self.text_of.get(i, "") + data

    def ids(self) -> list[str]:
        return [a["id"] for _, a in self.elements if a.get("id")]


def parse_index() -> Page:
    page = Page()
    page.feed(INDEX.read_text())
    return page


def local_references() -> set[str]:
    """Every URL the page and its modules load: src/href attributes, imports, CSS url()."""
    refs: set[str] = set()
    for tag, attrs in parse_index().elements:
        for name in ("src", "href"):
            value = attrs.get(name)
            if value and not value.startswith("#") and tag in ("script", "link", "img"):
                refs.add(value)
    for script in SCRIPTS:
        for module in re.findall(r"""^import\s[^;]*?from\s+"([^"]+)";""", script.read_text(), re.M):
            refs.add(urljoin(f"/dashboard/{script.name}", module))
    return refs


def test_the_page_is_served_at_the_root_without_a_key(client):
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.text == INDEX.read_text()
    csp = r.headers["content-security-policy"]
    for directive in ("script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"):
        assert directive in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    # the API behind it still wants a key, and the page is no API operation
    assert client.get("/v1/jobs").status_code == 401
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_everything_the_page_loads_is_served_here(client):
    refs = local_references()
    # every module, found through the imports
    assert {f"/dashboard/{p.name}" for p in SCRIPTS} | {"/dashboard/style.css"} <= refs
    for ref in sorted(refs):
        assert ref.startswith("/dashboard/"), f"{ref} is not one of the dashboard's own files"
        r = client.get(ref)
        assert r.status_code == 200, ref
        assert r.headers["x-content-type-options"] == "nosniff"
        if ref.endswith(".js"):  # module scripts must come with a JavaScript type
            assert "javascript" in r.headers["content-type"], ref
    assert client.get("/dashboard/missing.js").status_code == 404
    assert client.get("/dashboard/%2e%2e/dashboard.py").status_code == 404  # outside the folder


@pytest.mark.parametrize("path", STATIC_FILES, ids=lambda p: p.name)
def test_no_file_loads_anything_from_another_origin(path: Path):
    text = path.read_text()
    # no CDN, no web fonts, no analytics: a URL with a scheme or a protocol-relative one
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", text), path
    assert not re.search(r"""\bfrom\s+["'](https?:)?//""", text), path
    assert not re.search(r"""\bimport\s*\(\s*["'](https?:)?//""", text), path
    assert not re.search(r"""url\(\s*["']?(https?:)?//""", text), path
    assert "@import" not in text and "fonts.googleapis" not in text, path


def test_every_control_has_a_label_and_every_reference_a_target():
    page = parse_index()
    ids = page.ids()
    assert len(ids) == len(set(ids)), "duplicate ids"
    for i, (tag, attrs) in enumerate(page.elements):
        for name in ("aria-labelledby", "aria-describedby"):
            for target in (attrs.get(name) or "").split():
                assert target in ids, f"{tag}#{attrs.get('id')}: {name} {target} does not exist"
        if tag in ("input", "select", "textarea", "progress", "video"):
            labelled = (
                attrs.get("id") in page.label_for
                or attrs.get("aria-label")
                or attrs.get("aria-labelledby")
            )
            assert labelled, f"{tag}#{attrs.get('id')} has no label"
        if tag == "button":
            assert page.text_of.get(i, "").strip() or attrs.get("aria-label"), attrs
    for target in page.label_for:
        assert target in ids, f"a label is for #{target}, which does not exist"
    html = next(a for t, a in page.elements if t == "html")
    assert html.get("lang") == "en"
    # status changes are announced
    live = [a for _, a in page.elements if a.get("aria-live")]
    assert any(a.get("id") == "announcer" for a in live)


def test_every_element_the_scripts_look_up_exists():
    ids = set(parse_index().ids())
    for script in SCRIPTS:
        for found in re.findall(r"""\$\(\s*["']([\w-]+)["']\s*\)""", script.read_text()):
            assert found in ids, f"{script.name} looks up #{found}, which index.html lacks"


def test_the_form_offers_what_the_api_accepts(client, sqlite_db, local_storage):
    options = client.get("/dashboard/options.json").json()
    assert options["sizes"] == list(P.SIZES) and options["default_size"] in P.SIZES
    for n in options["infer_frames"]:
        assert P.check_infer_frames(n) == n
    assert len(options["infer_frames"]) == len(
        [n for n in range(1, P.INFER_FRAMES_MAX + 1) if n % P.FRAMES_PER_BLOCK_VIDEO == 0]
    )
    steps = options["sample_steps"]
    assert (steps["min"], steps["max"]) == (P.SAMPLE_STEPS_MIN, P.SAMPLE_STEPS_MAX)
    assert options["priority"] == {"min": -100, "max": 100}
    assert options["fps"] == P.FPS and options["auth_required"] is True
    assert options["script_max_chars"] == InputLimits().max_script_chars

    services = Services(
        config=ApiConfig(auth_required=False), database=sqlite_db, storage=local_storage
    )
    with TestClient(create_app(services)) as open_client:
        assert open_client.get("/dashboard/options.json").json()["auth_required"] is False


@pytest.mark.parametrize(
    ("preset", "size"), [("tiny", "128*128"), ("liveavatar-14b", P.SIZE_DEFAULT)]
)
def test_the_suggested_size_suits_the_model_the_workers_run(sqlite_db, local_storage, preset, size):
    """The tiny model is for CPUs, where the model's own default size renders at well under a
    frame per second: the form (and `longtake submit`) start from a small size there."""
    config = ApiConfig(model_preset=preset)
    services = Services(config=config, database=sqlite_db, storage=local_storage)
    with TestClient(create_app(services)) as client:
        options = client.get("/dashboard/options.json").json()
    assert (options["model_preset"], options["default_size"]) == (preset, size)


def contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two #rrggbb colours."""

    def luminance(colour: str) -> float:
        channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_text_colours_have_enough_contrast():
    """WCAG AA for normal text (4.5:1) on every background it is drawn on."""
    css = (STATIC_DIR / "style.css").read_text()
    colours = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6});", css))
    pairs = [
        ("text", "bg"), ("text", "panel"), ("muted", "panel"), ("muted", "bg"),
        ("error", "panel"), ("accent", "panel"), ("accent-text", "accent"),
        ("ok-text", "ok-bg"), ("run-text", "run-bg"), ("wait-text", "wait-bg"),
        ("fail-text", "fail-bg"), ("cancel-text", "cancel-bg"),
    ]  # fmt: skip
    for fg, bg in pairs:
        assert contrast(colours[fg], colours[bg]) >= 4.5, (fg, bg)
    assert contrast("#ffffff", "#000000") == pytest.approx(21)
