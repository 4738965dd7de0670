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

from .dit import DiTLoadReport, load_dit, open_sharded
from .download import DownloadReport, download, download_plan
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
from .verify import VerifyReport, verify

__all__ = [
    "PARTS",
    "CheckpointError",
    "CheckpointPaths",
    "CorruptFileError",
    "DiTLoadReport",
    "DownloadReport",
    "KeyMismatchError",
    "LoadedWeights",
    "MissingFileError",
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
