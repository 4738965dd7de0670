"""Released weights: the checkpoints layout, verification, download and loading.

Users bring the published files (Wan2.2-S2V-14B and LiveAvatar's LoRA, see layout.py);
longtake loads them exactly as released:

- `verify(root)` checks presence, shapes and dtypes from headers alone and reports what is
  missing or wrong; `download(root)` fetches the release where there is internet.
- `load_weights(root, placement, dit=...)` loads the parts a process needs onto their devices:
  the sharded DiT streamed tensor by tensor with the LoRA merged, umT5 into
  `UMT5EncoderModel`, the Wan VAE into `AutoencoderKLWan`, wav2vec2 into `Wav2Vec2Model`.
- `resolve_preset(root)` picks `liveavatar-14b` when the release verifies, else `tiny`.
"""

from typing import TYPE_CHECKING

from pipeline.lazy import exports

if TYPE_CHECKING:
    from .dit import DiTLoadReport, load_dit, open_sharded
    from .downloader import DownloadReport, download, download_plan
    from .errors import (
        CheckpointError,
        CorruptFileError,
        KeyMismatchError,
        MissingFileError,
        ShapeMismatchError,
    )
    from .layout import PARTS, CheckpointPaths, release_files
    from .loader import LoadedWeights, load_weights, resolve_preset
    from .placement import Placement, visiting
    from .preset_spec import release_spec
    from .specs import ReleaseSpec, S2VArchitecture
    from .verifier import VerifyReport, verify

__all__ = [
    "CheckpointError",
    "CheckpointPaths",
    "CorruptFileError",
    "DiTLoadReport",
    "DownloadReport",
    "KeyMismatchError",
    "LoadedWeights",
    "MissingFileError",
    "PARTS",
    "Placement",
    "ReleaseSpec",
    "S2VArchitecture",
    "ShapeMismatchError",
    "VerifyReport",
    "download",
    "download_plan",
    "load_dit",
    "load_weights",
    "open_sharded",
    "release_files",
    "release_spec",
    "resolve_preset",
    "verify",
    "visiting",
]

# Loaded on first use (no submodule shares a name with an export: importing a submodule sets
# the package's attribute of its name): the DiT's checkpoint reader (`.dit`) and the errors do not import the
# encoders' libraries (transformers, diffusers), which the loader and the verifier do; a
# worker starts its DiT's load before it pays for those imports (pipeline.dit_loading).
_EXPORTS = {
    "DiTLoadReport": ".dit",
    "load_dit": ".dit",
    "open_sharded": ".dit",
    "DownloadReport": ".downloader",
    "download": ".downloader",
    "download_plan": ".downloader",
    "CheckpointError": ".errors",
    "CorruptFileError": ".errors",
    "KeyMismatchError": ".errors",
    "MissingFileError": ".errors",
    "ShapeMismatchError": ".errors",
    "PARTS": ".layout",
    "CheckpointPaths": ".layout",
    "release_files": ".layout",
    "LoadedWeights": ".loader",
    "load_weights": ".loader",
    "resolve_preset": ".loader",
    "Placement": ".placement",
    "visiting": ".placement",
    "release_spec": ".preset_spec",
    "ReleaseSpec": ".specs",
    "S2VArchitecture": ".specs",
    "VerifyReport": ".verifier",
    "verify": ".verifier",
}


__getattr__ = exports(__name__, _EXPORTS)
