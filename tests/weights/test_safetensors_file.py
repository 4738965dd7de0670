"""Reading safetensors files tensor by tensor, and what a damaged file looks like."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.weights.errors import CorruptFileError, MissingFileError
from pipeline.weights.safetensors_file import TensorFile, read_header


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = {
        "a.weight": torch.randn(3, 5).to(torch.bfloat16),
        "b.bias": torch.arange(7, dtype=torch.float32),
        "c.index": torch.tensor([1, -2, 3], dtype=torch.int64),
        "d.scalar": torch.tensor(2.5, dtype=torch.float16),
        "e.empty": torch.empty(0, 4),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    return path, tensors


def test_header_describes_every_tensor_without_reading_data(written):
    path, tensors = written
    header = read_header(path)
    assert set(header.tensors) == set(tensors)
    for name, tensor in tensors.items():
        entry = header.tensors[name]
        assert entry.shape == tuple(tensor.shape)
        assert entry.dtype == tensor.dtype
        assert entry.nbytes == tensor.numel() * tensor.element_size()
    assert header.metadata == {"format": "pt"}


def test_tensors_read_back_bit_exact(written):
    path, tensors = written
    header = read_header(path)
    with TensorFile(header) as source:
        for name, tensor in tensors.items():
            got = source.read(header.tensors[name])
            assert got.dtype == tensor.dtype and torch.equal(got, tensor)


def test_read_into_a_larger_reused_buffer(written):
    path, tensors = written
    header = read_header(path)
    buffer = torch.empty(header.max_tensor_bytes + 16, dtype=torch.uint8)
    with TensorFile(header) as source:
        got = source.read_into(header.tensors["a.weight"], buffer)
        assert torch.equal(got, tensors["a.weight"])
        assert got.data_ptr() == buffer.data_ptr()  # no copy on the way


def test_read_into_a_buffer_that_is_not_contiguous_is_refused(written):
    """Its flat view would be a copy: the bytes would be read into the copy and lost."""
    path, _ = written
    header = read_header(path)
    strided = torch.zeros(16, 16, dtype=torch.uint8).t()
    with TensorFile(header) as source, pytest.raises(ValueError, match="not contiguous"):
        source.read_into(header.tensors["a.weight"], strided)
    assert not strided.any()


def test_truncated_file_is_reported_as_truncated(written):
    path, _ = written
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(CorruptFileError, match="truncated"):
        read_header(path)


def test_file_cut_inside_its_header(written):
    path, _ = written
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CorruptFileError, match="header claims"):
        read_header(path)


def test_garbage_is_not_a_safetensors_file(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"<html>503 Service Unavailable</html>" * 3)
    with pytest.raises(CorruptFileError, match=str(path)):
        read_header(path)


def test_header_that_is_not_json(tmp_path):
    path = tmp_path / "x.safetensors"
    body = b"{not json"
    path.write_bytes(len(body).to_bytes(8, "little") + body)
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        read_header(path)


def test_entry_whose_byte_range_does_not_match_its_shape(tmp_path):
    path = tmp_path / "x.safetensors"
    body = b'{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}'
    path.write_bytes(len(body).to_bytes(8, "little") + body + bytes(12))
    with pytest.raises(CorruptFileError, match="should span 16 bytes"):
        read_header(path)


def test_missing_file(tmp_path):
    with pytest.raises(MissingFileError, match="not found"):
        read_header(tmp_path / "absent.safetensors")
