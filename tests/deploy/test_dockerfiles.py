"""docker/*.Dockerfile: what the images are built from, what they install and how they run,
read without a Docker engine; and the build context their ignore files let through."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.deploy.files import (
    DOCKER,
    ROOT,
    Dockerfile,
    DockerIgnore,
    Stage,
    copy_sources,
    load_script,
    parse_dockerfile,
)

API = parse_dockerfile(DOCKER / "api.Dockerfile")
WORKER = parse_dockerfile(DOCKER / "worker.Dockerfile")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEPENDENCIES = {
    canonicalize_name(Requirement(r).name): Requirement(r)
    for r in PYPROJECT["project"]["dependencies"]
}

image_requirements = load_script("requirements")


def run_text(image: Dockerfile, stage: Stage) -> str:
    """Every RUN of the stage and the stages it is built from."""
    return "\n".join(s.run_text for s in image.chain(stage))


def base_image(image: Dockerfile, stage: Stage, **build_args: str) -> str:
    return image.resolve(image.chain(stage)[-1].base, build_args)


# --------------------------------------------------------------------------- the API image


def test_api_image_is_slim_python_without_the_model_stack():
    final = API.final
    assert final.name == "api"  # `docker build` with no --target builds the API
    base = base_image(API, final)
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", base), base
    python = re.match(r"python:(3\.\d+)", base).group(1)
    assert python in SpecifierSet(PYPROJECT["project"]["requires-python"])

    run = run_text(API, final)
    # third-party requirements from the project's pyproject, less the model stack ...
    assert "python /src/docker/requirements.py /src/pyproject.toml --api" in run
    assert "pip install -r /tmp/requirements.txt" in run
    # ... then the project itself, without its dependencies
    assert "pip install --no-deps /src" in run
    assert "torch" not in run
    sources = {src for s in API.chain(final) for i in s.all("COPY") for src in copy_sources(i)}
    assert {"pyproject.toml", "docker/requirements.py", "."} <= sources


def test_api_requirements_are_the_dependencies_less_the_model_stack():
    full = image_requirements.requirements(PYPROJECT)
    api = image_requirements.requirements(PYPROJECT, api=True)
    assert full == PYPROJECT["project"]["dependencies"]
    names = {image_requirements.requirement_name(r) for r in api}
    # every name in the model stack is a real dependency (no stale entries), and only those go
    assert set(DEPENDENCIES) >= image_requirements.MODEL_STACK
    assert names == set(DEPENDENCIES) - image_requirements.MODEL_STACK
    assert "torch" in image_requirements.MODEL_STACK and "celery" in names

    out = subprocess.run(
        [sys.executable, str(DOCKER / "requirements.py"), str(ROOT / "pyproject.toml"), "--api"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines() == api


def test_api_image_listens_on_every_interface_of_the_container():
    from ops.settings import Settings

    env = [i.args for s in API.chain(API.final) for i in s.all("ENV")]
    assert "LONGTAKE_HOST=0.0.0.0" in env
    exposed = {i.args for s in API.chain(API.final) for i in s.all("EXPOSE")}
    assert str(Settings.model_fields["port"].default) in exposed


# --------------------------------------------------------------------------- the worker image


def test_worker_image_is_cuda_runtime_with_cuda_torch_from_the_pyproject():
    final = WORKER.final
    assert final.name == "worker"
    base = base_image(WORKER, final)
    assert base.startswith("nvidia/cuda:") and "-runtime-" in base, base
    run = run_text(WORKER, final)

    # torch pinned, from the index of the wanted build; PyPI's Linux torch wheels are CUDA builds
    assert 'pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in run
    assert WORKER.args["TORCH_INDEX_URL"] == "https://pypi.org/simple"
    assert WORKER.args["TORCH_VERSION"] in DEPENDENCIES["torch"].specifier
    # the rest from pyproject.toml, constrained to that torch; then the project
    assert (
        "python /src/docker/requirements.py /src/pyproject.toml --extra cudnn"
        " > /tmp/requirements.txt" in run
    )
    assert "pip install -c /opt/venv/constraints.txt -r /tmp/requirements.txt" in run
    assert 'echo "torch==${TORCH_VERSION}" > /opt/venv/constraints.txt' in run
    assert "pip install --no-deps /src" in run


def test_worker_requirements_add_the_cudnn_frontend_that_fp8_attention_needs():
    base = image_requirements.requirements(PYPROJECT)
    worker = image_requirements.requirements(PYPROJECT, extras=["cudnn"])
    extra = PYPROJECT["project"]["optional-dependencies"]["cudnn"]
    assert worker == base + extra
    assert {image_requirements.requirement_name(r) for r in extra} == {"nvidia-cudnn-frontend"}
    with pytest.raises(ValueError, match="no optional dependencies 'cuda'"):
        image_requirements.requirements(PYPROJECT, extras=["cuda"])
    out = subprocess.run(
        [sys.executable, str(DOCKER / "requirements.py"), str(ROOT / "pyproject.toml")]
        + ["--extra", "cudnn"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out == worker


def test_flash_attn_is_built_only_when_the_build_arg_asks():
    assert WORKER.args["FLASH_ATTN"] == "false"
    chooser = WORKER.stage("flash-attn")
    assert chooser.base == "flash-attn-${FLASH_ATTN}"
    built = WORKER.stage(WORKER.resolve(chooser.base, {"FLASH_ATTN": "true"}))
    skipped = WORKER.stage(WORKER.resolve(chooser.base))
    assert "flash-attn" not in skipped.run_text
    assert '"flash-attn==${FLASH_ATTN_VERSION}"' in built.run_text
    # compiled against the same torch, in the CUDA devel image (nvcc), as the extra allows
    assert base_image(WORKER, built).startswith("nvidia/cuda:") and "-devel-" in base_image(
        WORKER, built
    )
    assert 'pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in (
        built.run_text
    )
    (gpu_extra,) = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["gpu"]]
    assert gpu_extra.name == "flash-attn"
    assert WORKER.args["FLASH_ATTN_VERSION"] in gpu_extra.specifier
    # both builds share the runtime's Ubuntu release, so the wheel matches its Python
    assert (
        base_image(WORKER, built).rsplit("-", 1)[1]
        == base_image(WORKER, WORKER.final).rsplit("-", 1)[1]
    )
    copies = [i.args for i in WORKER.final.all("COPY")]
    assert "--from=flash-attn /wheels /tmp/wheels" in copies


def test_worker_image_takes_weights_from_a_mount_not_the_image():
    final = WORKER.final
    assert WORKER.effective(final, "WORKDIR").args == "/app"
    assert "install -d -m 0755 /app/checkpoints" in run_text(WORKER, final)
    ignore = DockerIgnore.read(DOCKER / "worker.Dockerfile.dockerignore")
    assert ignore.excluded(
        "checkpoints/Wan2.2-S2V-14B/diffusion_pytorch_model-00001-of-00004.safetensors"
    )


# --------------------------------------------------------------------------- both


@pytest.mark.parametrize(
    "image,stage,role",
    [(API, "api", "api"), (API, "flower", "url"), (WORKER, "worker", "worker")],
    ids=["api", "flower", "worker"],
)
def test_images_run_unprivileged_through_the_entrypoint_with_a_health_check(image, stage, role):
    stage_ = image.stage(stage)
    user = image.effective(stage_, "USER").args
    assert user not in ("root", "0") and not user.startswith("0:")
    assert image.effective(stage_, "ENTRYPOINT").exec_form() == ["/app/docker/entrypoint.sh"]
    check = image.effective(stage_, "HEALTHCHECK").args
    command = check[check.index("CMD ") + 4 :]
    assert command.startswith('["python", "/app/docker/healthcheck.py", "' + role + '"')
    for option in ("--interval=", "--timeout=", "--retries="):
        assert option in check
    run = run_text(image, stage_)
    assert "install -m 0755 /src/docker/entrypoint.sh /app/docker/entrypoint.sh" in run
    assert "/src/docker/healthcheck.py" in run
    assert "useradd --uid 10001" in run


def test_images_are_built_from_the_project_pyproject():
    """Both install `/src`, the build context's copy of the repository, with pip (setuptools
    builds it from pyproject.toml), not a published package."""
    for image in (API, WORKER):
        sources = {
            src for s in image.chain(image.final) for i in s.all("COPY") for src in copy_sources(i)
        }
        assert {"pyproject.toml", "."} <= sources
        assert re.search(r"pip install --no-deps /src\b", run_text(image, image.final))
        assert "pip install longtake" not in run_text(image, image.final)


HEAVY = (".git", ".venv", "checkpoints", "var", "bench-out", ".whl", "tests")


def context_files(ignore: DockerIgnore) -> list[str]:
    """The files of the repository that reach the build context (heavy trees asserted excluded
    rather than walked)."""
    for heavy in HEAVY:
        assert ignore.excluded(f"{heavy}/some/file"), heavy
    kept = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel = Path(dirpath).relative_to(ROOT)
        dirnames[:] = [d for d in dirnames if str(rel / d) not in HEAVY]
        kept += [str(rel / f) for f in filenames if not ignore.excluded(str(rel / f))]
    return kept


@pytest.mark.parametrize("name", ["api", "worker"])
def test_build_context_has_what_the_dockerfile_copies_and_nothing_heavy(name):
    image = parse_dockerfile(DOCKER / f"{name}.Dockerfile")
    ignore = DockerIgnore.read(DOCKER / f"{name}.Dockerfile.dockerignore")
    for stage in image.stages:
        for copy in stage.all("COPY"):
            for source in copy_sources(copy):
                if source != ".":
                    assert (ROOT / source).exists() and not ignore.excluded(source), source
        for used in re.findall(r"/src/(\S+)", stage.run_text):
            if used not in ("pyproject.toml",) and "." in used:
                assert not ignore.excluded(used), used
    kept = context_files(ignore)
    packages = [
        p for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
        for p in [pattern.rstrip("*")]
    ]  # fmt: skip
    for package in packages:
        assert f"{package}/__init__.py" in kept, package
    assert "pyproject.toml" in kept and PYPROJECT["project"]["readme"] in kept
    assert "db/migrations/env.py" in kept
    assert not [f for f in kept if "__pycache__" in f or f.endswith(".pyc")]
    assert not [f for f in kept if f.startswith("docker/") and f.endswith(("yaml", "Dockerfile"))]


def test_the_filtered_context_builds_a_wheel_with_migrations_and_the_console_command(tmp_path):
    """What `pip install /src` gets in the image: the migrations `longtake migrate` runs must be
    package data of the wheel, not files of a checkout."""
    ignore = DockerIgnore.read(DOCKER / "api.Dockerfile.dockerignore")
    src = tmp_path / "src"
    for rel in context_files(ignore):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "wheels"), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheels").glob("longtake-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "db/migrations/env.py" in names and "db/migrations/script.py.mako" in names
    versions = sorted(p.name for p in (ROOT / "db/migrations/versions").glob("*.py"))
    assert versions and all(f"db/migrations/versions/{v}" in names for v in versions)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "longtake = ops.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
