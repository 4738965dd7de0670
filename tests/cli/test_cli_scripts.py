"""Scripts from the command line: `longtake submit --script`, `longtake voices`, and
manifests whose rows give a script instead of audio, against a real embedded service."""

from __future__ import annotations

import re

import pytest

from api.client import LongtakeClient
from ops import cli
from ops.manifest import ManifestError, jobs_from_manifest
from tests import media


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def lesson(tmp_path):
    folder = tmp_path / "lesson"
    folder.mkdir()
    (folder / "teacher.png").write_bytes(media.png())
    (folder / "intro.txt").write_text("Bonjour à tous.\nAujourd'hui, les fractions.\n")
    (folder / "outro.txt").write_text("See you next week.")
    (folder / "talk.wav").write_bytes(media.wav(2.0))
    return folder


def test_submit_a_script_and_see_it_in_the_job(embedded_service, lesson, capsys):
    url = ["--api-url", embedded_service.url]
    code, out, err = run(capsys, "submit", str(lesson / "teacher.png"), "--script",
                         str(lesson / "intro.txt"), "--language", "fr-fr", "--voice", "f2",
                         "--prompt", "A teacher", *url)  # fmt: skip
    assert code == 0, err
    job_id = out.strip()
    with LongtakeClient(embedded_service.url, api_key=embedded_service.api_key) as client:
        script = client.get(job_id)["params"]["script"]
    assert script == {"text": "Bonjour à tous.\nAujourd'hui, les fractions.", "language": "fr-fr",
                      "voice": "f2", "engine": "espeak-ng"}  # fmt: skip
    code, out, _ = run(capsys, "status", job_id, *url)
    assert (
        "script    43 characters in fr-fr, voice f2 (espeak-ng): Bonjour à tous. Aujourd'hui" in out
    )


def test_submit_refuses_both_or_neither_and_reports_the_apis_message(
    embedded_service, lesson, capsys
):
    url = ["--api-url", embedded_service.url]
    image, talk = str(lesson / "teacher.png"), str(lesson / "talk.wav")
    code, _, err = run(capsys, "submit", image, talk, "--script", str(lesson / "intro.txt"),
                       "--prompt", "p", *url)  # fmt: skip
    assert code == 2 and "one of the two" in err
    code, _, err = run(capsys, "submit", image, "--prompt", "p", *url)
    assert code == 2 and "--script FILE" in err
    code, _, err = run(capsys, "submit", image, talk, "--voice", "f2", "--prompt", "p", *url)
    assert code == 2 and "go with --script" in err
    (lesson / "latin1.txt").write_bytes("café".encode("latin-1"))
    code, _, err = run(capsys, "submit", image, "--script", str(lesson / "latin1.txt"),
                       "--language", "fr-fr", "--prompt", "p", *url)  # fmt: skip
    assert code == 2 and "is not UTF-8 text" in err
    code, _, err = run(capsys, "submit", image, "--script", str(lesson / "intro.txt"),
                       "--language", "tlh", "--prompt", "p", *url)  # fmt: skip
    assert code == 1 and "error: language: espeak-ng does not speak 'tlh'; use one of:" in err


def test_voices_lists_the_engines_languages_and_voices(embedded_service, capsys):
    url = ["--api-url", embedded_service.url]
    code, out, _ = run(capsys, "voices", *url)
    assert code == 0
    lines = out.splitlines()
    assert (
        lines[0].startswith("engine espeak-ng (default): ") and "default voice default" in lines[0]
    )
    assert " en-us " in lines[1] and lines[1].startswith("languages  ")
    assert any(line.split()[:2] == ["f3", "female3"] for line in lines)
    code, out, _ = run(capsys, "voices", "--language", "de", *url)
    assert code == 0 and "languages  " not in out and "female3" in out
    code, out, _ = run(capsys, "voices", "--language", "tlh", *url)
    assert code == 0 and out == ""


def test_a_manifest_row_may_give_a_script_instead_of_audio(embedded_service, lesson, capsys):
    manifest = lesson / "jobs.csv"
    manifest.write_text(
        "image,audio,script,language,voice,prompt\n"
        "teacher.png,,intro.txt,fr-fr,f2,Intro\n"
        "teacher.png,talk.wav,,,,Recorded\n"
        "teacher.png,,outro.txt,,,Outro\n"  # the language of --language
    )
    url = embedded_service.url
    code, out, err = run(capsys, "batch", "submit", str(manifest), "--language", "en-gb",
                         "--api-url", url)  # fmt: skip
    assert code == 0, err
    with LongtakeClient(url, api_key=embedded_service.api_key) as client:
        jobs = {j["params"]["prompt"]: j["params"] for j in client.list()["jobs"]}
    assert jobs["Intro"]["script"]["text"].startswith("Bonjour à tous.")
    assert (jobs["Intro"]["script"]["language"], jobs["Intro"]["script"]["voice"]) == (
        "fr-fr",
        "f2",
    )
    assert jobs["Recorded"]["script"] is None
    assert jobs["Outro"]["script"] == {"text": "See you next week.", "language": "en-gb",
                                       "voice": "default", "engine": "espeak-ng"}  # fmt: skip
    run(capsys, "batch", "cancel", out.strip(), "--api-url", url)


def test_manifest_scripts_are_read_relative_to_the_manifest(tmp_path, lesson):
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text('{"image": "lesson/teacher.png", "script": "lesson/outro.txt", '
                     '"language": "en-us", "prompt": "p"}\n')  # fmt: skip
    (job,) = jobs_from_manifest(jsonl)
    assert job == {"image": str(lesson / "teacher.png"), "script": "See you next week.",
                   "language": "en-us", "prompt": "p"}  # fmt: skip
    for row, message in [
        ('{"image": "a.png", "audio": "a.wav", "script": "s.txt"}', "both audio and a script"),
        ('{"image": "a.png", "script": "missing.txt"}', "missing.txt is not a file"),
        ('{"image": "a.png"}', "has no audio (or a script)"),
    ]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(row + "\n")
        with pytest.raises(ManifestError, match=re.escape(message)):
            jobs_from_manifest(bad)


def test_submit_reads_the_script_from_standard_input(embedded_service, lesson, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("Read from a pipe.\n"))
    code, out, err = run(capsys, "submit", str(lesson / "teacher.png"), "--script", "-",
                         "--language", "en-us", "--prompt", "p",
                         "--api-url", embedded_service.url)  # fmt: skip
    assert code == 0, err
    with LongtakeClient(embedded_service.url, api_key=embedded_service.api_key) as client:
        assert client.get(out.strip())["params"]["script"]["text"] == "Read from a pipe."
