from pathlib import Path

import pytest

from .tiny_release import TinyRelease, write_release


@pytest.fixture(scope="session")
def pristine_release(tmp_path_factory: pytest.TempPathFactory) -> TinyRelease:
    """One tiny release for the whole session; tests that damage files use `release`."""
    return write_release(tmp_path_factory.mktemp("pristine") / "checkpoints")


@pytest.fixture
def release(pristine_release: TinyRelease, tmp_path: Path) -> TinyRelease:
    """A private copy of the tiny release that a test may damage."""
    return pristine_release.copy_to(tmp_path / "checkpoints")
