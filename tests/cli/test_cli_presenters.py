"""`longtake presenters`, `longtake submit --presenter` and presenters in batch manifests,
against a real embedded service."""

from __future__ import annotations

import json

import pytest

from api.client import LongtakeClient
from ops import cli
from ops.manifest import ManifestError, jobs_from_manifest, read_jobs
from tests import media


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def files(tmp_path):
    image, audio = tmp_path / "anna.png", tmp_path / "lesson.wav"
    image.write_bytes(media.png(256, 384))
    audio.write_bytes(media.wav(3.0))
    return image, audio


def test_presenters_create_list_use_and_delete(embedded_service, files, capsys):
    url = ["--api-url", embedded_service.url]
    image, audio = files
    code, out, err = run(capsys, "presenters", "create", "anna", str(image), "--prompt",
                         "A teacher at a whiteboard", "--size", "384*256", *url)  # fmt: skip
    assert (code, out.strip()) == (0, "anna"), err
    assert "256x384 portrait, videos at 256x384" in err and "--presenter anna" in err
    # no --size: the one the server suggests for its model (the tiny one here)
    assert run(capsys, "presenters", "create", "bob", str(image), "--prompt", "A narrator",
               *url)[0] == 0  # fmt: skip

    code, out, _ = run(capsys, "presenters", "list", *url)
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "SIZE", "VIDEO", "PROMPT"]
    assert [r.split()[:3] for r in rows] == [
        ["anna", "384*256", "256x384"], ["bob", "128*128", "64x128"],
    ]  # fmt: skip
    assert rows[0].endswith("A teacher at a whiteboard")
    code, out, _ = run(capsys, "presenters", "show", "anna", *url)
    shown = json.loads(out)
    assert (shown["name"], shown["image_width"]) == ("anna", 256)

    code, out, err = run(capsys, "submit", "--presenter", "anna", str(audio), "--seed", "4", *url)
    assert code == 0, err
    job_id = out.strip()
    assert "with presenter anna" in err
    with LongtakeClient(embedded_service.url, api_key=embedded_service.api_key) as client:
        job = client.get(job_id)
        by_files = client.submit(image, audio, prompt="A teacher at a whiteboard",
                                 size="384*256", seed=4)  # fmt: skip
    assert job["presenter"] == "anna" and job["params"] == by_files["params"]
    code, out, _ = run(capsys, "status", job_id, *url)
    assert "presenter anna" in out

    code, out, _ = run(capsys, "presenters", "delete", "anna", *url)
    assert code == 0 and "presenter anna deleted" in out
    code, _, err = run(capsys, "presenters", "delete", "anna", *url)
    assert (code, err.strip()) == (1, "error: presenter anna does not exist")
    code, _, err = run(capsys, "submit", "--presenter", "anna", str(audio), *url)
    assert code == 1 and "no presenter named 'anna'" in err
    assert run(capsys, "status", job_id, *url)[0] == 0  # the job is as it was


def test_presenter_command_lines_refused_before_asking_the_api(files, capsys):
    image, audio = files
    for argv, message in (
        (["submit", "--presenter", "anna", str(image), str(audio)], "drop IMAGE"),
        (["submit", "--presenter", "anna", str(audio), "--prompt", "p"], "drop --prompt"),
        (["submit", "--presenter", "anna", str(audio), "--size", "64*64"], "drop --size"),
        (["submit", str(audio)], "give IMAGE and AUDIO, or --presenter NAME and AUDIO"),
        (["submit", str(image), str(audio)], "give --prompt"),
        (["presenters", "create", "x", "nope.png", "--prompt", "p"], "nope.png is not a file"),
    ):
        code, _, err = run(capsys, *argv, "--api-url", "http://127.0.0.1:9")
        assert code == 2 and message in err, (argv, err)


def test_a_presenter_with_a_script_from_the_command_line_and_a_manifest(
    embedded_service, files, capsys, tmp_path
):
    url = ["--api-url", embedded_service.url]
    image, audio = files
    assert run(capsys, "presenters", "create", "anna", str(image), "--prompt", "Anna",
               "--size", "384*256", *url)[0] == 0  # fmt: skip
    script = tmp_path / "intro.txt"
    script.write_text("Hello and welcome.\n")
    spoken = {"text": "Hello and welcome.", "language": "en-us", "voice": "f3",
              "engine": "espeak-ng"}  # fmt: skip
    code, out, err = run(capsys, "submit", "--presenter", "anna", "--script", str(script),
                         "--language", "en-us", "--voice", "f3", "--seed", "5", *url)  # fmt: skip
    assert code == 0, err
    with LongtakeClient(embedded_service.url, api_key=embedded_service.api_key) as client:
        job = client.get(out.strip())
        by_files = client.submit(
            image,
            None,
            prompt="Anna",
            size="384*256",
            seed=5,
            script="Hello and welcome.\n",
            language="en-us",
            voice="f3",
        )
    assert job["presenter"] == "anna" and job["params"]["script"] == spoken
    assert job["params"] == by_files["params"]

    # a manifest row: a presenter and a script file, relative to the manifest
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("presenter,script,language,voice,seed\nanna,intro.txt,en-us,f3,5\n")
    code, out, err = run(capsys, "batch", "submit", str(manifest), *url)
    assert code == 0, err
    with LongtakeClient(embedded_service.url, api_key=embedded_service.api_key) as client:
        (row,) = client.list(limit=1)["jobs"]
    assert row["presenter"] == "anna" and row["params"] == by_files["params"]

    # a presenter, a script and a path: the path would be the portrait
    code, _, err = run(capsys, "submit", "--presenter", "anna", str(audio), "--script",
                       str(script), "--language", "en-us", *url)  # fmt: skip
    assert code == 2 and "drop IMAGE" in err


def test_batch_submit_with_presenters(embedded_service, files, capsys, tmp_path):
    url = ["--api-url", embedded_service.url]
    image, audio = files
    run(capsys, "presenters", "create", "anna", str(image), "--prompt", "Anna", "--size",
        "384*256", *url)  # fmt: skip
    folder = tmp_path / "course"
    folder.mkdir()
    for i in range(2):
        (folder / f"lesson-{i}.wav").write_bytes(media.wav(2.0 + i))
    code, out, err = run(capsys, "batch", "submit", str(folder), "--presenter", "anna", *url)
    assert code == 0, err
    assert "2 jobs queued (2 files uploaded)" in err
    with LongtakeClient(embedded_service.url, api_key=embedded_service.api_key) as client:
        jobs = client.list()["jobs"]
        assert {(j["presenter"], j["params"]["prompt"], j["params"]["size"]) for j in jobs} == {
            ("anna", "Anna", "384*256")  # the presenter's size, not the suggested one
        }

        # a manifest mixes presenters and portraits, row by row
        manifest = folder / "jobs.csv"
        manifest.write_text(
            "presenter,image,audio,prompt,seed\n"
            "anna,,lesson-0.wav,,1\n"
            f",{image},lesson-1.wav,A guest,2\n"
        )
        code, out, err = run(capsys, "batch", "submit", str(manifest), *url)
        assert code == 0, err
        batch = client.list(limit=2)["jobs"]
    by_seed = {j["params"]["seed"]: j for j in batch}
    assert (by_seed[1]["presenter"], by_seed[1]["params"]["prompt"]) == ("anna", "Anna")
    assert (by_seed[2]["presenter"], by_seed[2]["params"]["prompt"]) == (None, "A guest")

    # an unknown presenter refuses the batch, naming the row's presenter
    manifest.write_text("presenter,audio\nnobody,lesson-0.wav\n")
    code, _, err = run(capsys, "batch", "submit", str(manifest), *url)
    assert code == 1 and "jobs[0].presenter: you have no presenter named 'nobody'" in err


def test_manifests_with_presenters(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text(
        '{"presenter": "anna", "audio": "a.wav"}\n'
        '{"image": "s3://inputs/face.png", "audio": "a.wav"}\n'
        '{"audio": "a.wav"}\n'
    )
    with pytest.raises(ManifestError, match="job 3 has no image \\(nor a presenter\\)"):
        jobs_from_manifest(jsonl)
    first, second, third = read_jobs(jsonl, image=None, prompt=None, presenter="bob")
    audio = str(tmp_path / "a.wav")
    assert first == {"presenter": "anna", "audio": audio}  # its own presenter
    assert second == {"image": "s3://inputs/face.png", "audio": audio}  # its own portrait
    assert third == {"presenter": "bob", "audio": audio}  # the command line's presenter
    csv_file = tmp_path / "jobs.csv"
    csv_file.write_text("presenter,audio,prompt\n2024,a.wav,\n")
    assert jobs_from_manifest(csv_file) == [{"presenter": "2024", "audio": audio}]  # text
    with pytest.raises(ManifestError, match="drop --image and --prompt"):
        read_jobs(jsonl, image=None, prompt="p", presenter="bob")
