"""The dashboard's job view shows a job's script: its text as written and who spoke it."""

from __future__ import annotations

from api.client import LongtakeClient
from ops.demo import portrait_png
from tests.dashboard.test_browser import Watched, browser, sign_in  # noqa: F401 (fixture)

SCRIPT = "Welcome back.\nToday: adding fractions, step by step."


def test_the_job_view_shows_the_script_and_its_voice(browser, embedded_service, tmp_path):  # noqa: F811
    portrait = tmp_path / "portrait.png"
    portrait.write_bytes(portrait_png(256, 256))
    with LongtakeClient(embedded_service.url, api_key=embedded_service.api_key) as client:
        job = client.submit(portrait, None, prompt="A teacher", script=SCRIPT, language="en-gb",
                            voice="m3", size="128*128")  # fmt: skip
    watched = Watched(browser, embedded_service.url)
    try:
        sign_in(watched.page, embedded_service.api_key, f"/#job={job['id']}")
        facts = watched.page.locator("#detail-facts")
        script = facts.locator("dd.script")
        script.wait_for(state="attached")
        watched.page.locator("#facts summary").click()  # the parameters, folded by default
        script.wait_for()
        assert script.inner_text() == SCRIPT  # line breaks kept, set as text
        speech = facts.locator("dt", has_text="Speech").locator("xpath=following-sibling::dd[1]")
        assert speech.inner_text().endswith("spoken from the script (en-gb, voice m3, espeak-ng)")
        watched.screenshot("script-job.png")
        assert watched.problems == []
    finally:
        watched.close()
