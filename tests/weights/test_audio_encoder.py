"""wav2vec2 from its release folder into Wav2Vec2Model."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.weights.audio_encoder import load_audio_encoder, load_feature_extractor
from pipeline.weights.errors import CorruptFileError, KeyMismatchError


def test_every_encoder_tensor_lands_and_only_the_ctc_head_is_left_out(pristine_release):
    model = load_audio_encoder(pristine_release.paths.wav2vec2, "cpu")
    state = model.state_dict()
    written = pristine_release.written["audio"]
    used = {k: v for k, v in written.items() if not k.startswith("lm_head.")}
    assert len(state) == len(used)
    for name, tensor in used.items():
        ours = (
            name.removeprefix("wav2vec2.")
            .replace("weight_g", "parametrizations.weight.original0")
            .replace("weight_v", "parametrizations.weight.original1")
        )
        assert torch.equal(state[ours], tensor), name
    hidden = model(torch.randn(1, 1600), output_hidden_states=True).hidden_states
    assert len(hidden) == 3  # embeddings + 2 layers: what the DiT's audio encoder mixes


def test_missing_encoder_tensor_is_an_error_not_a_random_init(release):
    path = release.paths.wav2vec2 / "model.safetensors"
    tensors = load_file(path)
    del tensors["wav2vec2.encoder.layers.1.attention.k_proj.weight"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(KeyMismatchError, match=r"encoder.layers.1.attention.k_proj.weight"):
        load_audio_encoder(release.paths.wav2vec2, "cpu")


def test_truncated_weights(release):
    path = release.paths.wav2vec2 / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(CorruptFileError, match="model.safetensors: truncated"):
        load_audio_encoder(release.paths.wav2vec2, "cpu")


def test_feature_extractor_normalises_like_training(pristine_release):
    extractor = load_feature_extractor(pristine_release.paths.wav2vec2)
    values = extractor(torch.randn(16000).numpy() * 5 + 3, sampling_rate=16000).input_values[0]
    assert abs(float(values.mean())) < 1e-3 and abs(float(values.std()) - 1) < 1e-2
