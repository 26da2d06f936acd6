"""musicguide/models/tensor_file.py: safetensors files read as views of the mapped file, the same
tensors safetensors itself reads, and every malformed header refused before a byte is viewed."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from musicguide.models.folder import _state_slots
from musicguide.models.latent_diffusion import build_model
from musicguide.models.presets import tiny_random_config
from musicguide.models.tensor_file import TensorFile, TensorFileError


def _mixed_tensors() -> dict[str, torch.Tensor]:
    """Every dtype the loader meets, with odd byte counts first so that later tensors sit at
    offsets no wider type divides, and an empty tensor."""
    g = torch.Generator().manual_seed(0)
    return {
        "a.bytes": torch.randint(0, 255, (3,), generator=g, dtype=torch.uint8),
        "b.flags": torch.tensor([True, False, True]),
        "c.half": torch.randn(5, 3, generator=g).half(),
        "d.brain": torch.randn(2, 7, generator=g).bfloat16(),
        "e.single": torch.randn(4, 1, 3, generator=g),
        "f.double": torch.randn(3, generator=g, dtype=torch.float64),
        "g.long": torch.arange(-3, 4),
        "h.none": torch.empty(0, 4),
        "i.scalar": torch.tensor(2.5),
    }


def test_every_tensor_reads_as_safetensors_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "mixed.safetensors"
    save_file(_mixed_tensors(), str(path), metadata={"format": "pt"})
    expected = load_file(str(path))
    file = TensorFile(path)
    assert file.metadata == {"format": "pt"} and sorted(file.keys()) == sorted(expected)
    views = file.views()
    assert list(views) == list(file.entries)
    for name, tensor in expected.items():
        view = views[name]
        assert view.dtype == tensor.dtype and view.shape == tensor.shape, name
        assert torch.equal(view, tensor), name


def test_views_are_of_the_mapped_file_and_outlive_it(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(path))
    view = TensorFile(path).views(["w"])["w"]  # the TensorFile is gone; its map lives on in the view
    assert torch.equal(view.clone(), torch.arange(6.0).reshape(2, 3))


def _file(tmp_path: Path, header: dict, data: bytes, header_bytes: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw) if header_bytes is None else header_bytes) + raw + data)
    return path


@pytest.mark.parametrize(("header", "data", "message"), [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "truncated"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, "bytes no tensor owns"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "spans 8 bytes"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "gap or an overlap"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "gap or an overlap"),
    ({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "no valid dtype"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "whole numbers"),
    ({"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, b"\0" * 8, "whole numbers"),
    ({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "no valid dtype"),
    ({"w": [1, 2]}, b"", "no valid dtype"),
    ({"__metadata__": {"n": 1}}, b"", "map of strings"),
])
def test_a_malformed_header_is_refused_with_what_is_wrong(tmp_path: Path, header: dict, data: bytes,
                                                          message: str) -> None:
    with pytest.raises(TensorFileError, match=message):
        TensorFile(_file(tmp_path, header, data))


def test_a_header_that_is_not_there_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TensorFileError, match="too short for a header"):
        TensorFile(_short(tmp_path))
    with pytest.raises(TensorFileError, match="a header of"):
        TensorFile(_file(tmp_path, {}, b"", header_bytes=1 << 40))
    (tmp_path / "text.safetensors").write_bytes(struct.pack("<Q", 5) + b"hello")
    with pytest.raises(TensorFileError, match="not JSON"):
        TensorFile(tmp_path / "text.safetensors")
    (tmp_path / "list.safetensors").write_bytes(struct.pack("<Q", 2) + b"[]")
    with pytest.raises(TensorFileError, match="not a JSON object"):
        TensorFile(tmp_path / "list.safetensors")


def _short(tmp_path: Path) -> Path:
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\1\0\0")
    return path


def test_a_file_of_no_tensors_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    save_file({}, str(path))
    assert TensorFile(path).keys() == []


def test_the_loader_finds_every_key_where_state_dict_puts_it() -> None:
    """models.folder assigns each tensor to the module state_dict() names: the same keys, in the
    same order, with the same shapes, and a module shared under two names listed under both."""
    from musicguide.models.sa3 import SA3Model, sa3_config_from_dict, tiny_sa3_config

    torch.manual_seed(0)
    shared = build_model(tiny_random_config())
    shared.twin = shared.model  # one module under two names, as a tied model would hold it
    for model in (build_model(tiny_random_config()), SA3Model(sa3_config_from_dict(tiny_sa3_config())), shared):
        state = model.state_dict()
        slots = _state_slots(model)
        assert list(slots) == list(state)
        assert all(slots[k].shape == v.shape for k, v in state.items())
    assert any(k.startswith("twin.") for k in _state_slots(shared))
