"""Safetensors straight into one device block (serving/adapters/weights.py): the same tensors as the
safetensors library reads, one aligned block, the staged (CUDA) path through a fake CUDA-kind device, and a
header that lies is refused before anything is read."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from serving.adapters.weights import ALIGN, WeightsError, fast_loader, layout, load_safetensors, read_header
from serving.vram.devices import CpuDevice
from serving.vram.pinned import CopyEngine, HostPool


def sample_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(8, generator=g).half(),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "emb": torch.randn(33, 5, generator=g).to(torch.bfloat16),
        "empty": torch.zeros(0, 4),
        "classifier.weight": torch.randn(10, 4, generator=g),
    }


@pytest.fixture
def st_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(sample_state(), str(path))
    return path


def test_cpu_load_matches_the_safetensors_library_tensor_for_tensor(st_file):
    ref = load_file(str(st_file))
    got, block, info = load_safetensors(st_file, CpuDevice())
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape and torch.equal(got[k], ref[k]), k
    assert info.loader == "zoo-direct" and info.direct and "no mmap" in info.note
    base = block.data_ptr()
    for k, t in got.items():  # every tensor is a view of the one block, aligned
        if t.numel():
            assert t.untyped_storage().data_ptr() == block.untyped_storage().data_ptr(), k
            assert (t.data_ptr() - base) % ALIGN == 0, k


def test_keep_selects_tensors_and_the_block_holds_only_those(st_file):
    got, block, _ = load_safetensors(st_file, CpuDevice(), keep=lambda k: not k.startswith("classifier."))
    assert "classifier.weight" not in got and "conv.weight" in got
    entries = [e for e in read_header(st_file) if not e.name.startswith("classifier.")]
    assert block.numel() == layout(entries)[1]


class StagedDevice:
    """A CUDA-kind device whose memory is the host: drives the staged path (pinned staging + copy engine)."""

    kind, torch_device = "cuda", "cpu"

    def __init__(self) -> None:
        self.host_pool = HostPool(pin=False)
        self.copy_engine = CopyEngine("cpu")


def test_the_staged_cuda_path_reads_in_chunks_and_gives_the_same_tensors(st_file):
    dev = StagedDevice()
    ref = load_file(str(st_file))
    got, _, info = load_safetensors(st_file, dev, staging_bytes=256)  # tiny chunks: many rounds
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    assert "staging buffer" in info.note and info.direct
    assert dev.copy_engine.bytes_copied == sum(t.numel() * t.element_size() for t in ref.values())
    assert dev.copy_engine.copies > len(ref)  # tensors larger than a chunk went in several copies
    # the two staging buffers (double buffering) came from the pool once and went back
    assert dev.host_pool.stats.allocations == 2 and dev.host_pool.stats.in_use_bytes == 0
    assert dev.copy_engine.staged_chunks > 2


def test_a_second_staged_load_reuses_the_staging_buffers(st_file):
    dev = StagedDevice()
    load_safetensors(st_file, dev)
    load_safetensors(st_file, dev)
    assert dev.host_pool.stats.allocations == 2 and dev.host_pool.stats.reuses == 2


def write_raw(path, header: object, data: bytes = b"", *, raw_header: bytes | None = None) -> None:
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


@pytest.mark.parametrize("header,data,match", [
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "does not match"),  # past the end
    ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "does not match"),  # shape lies
    ({"x": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, "unsupported dtype"),
    ({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "negative"),
    ({"x": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "malformed"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlap"),
    (["not", "an", "object"], b"", "not a JSON object"),
], ids=["past-end", "shape-lies", "dtype", "negative", "malformed", "overlap", "not-object"])
def test_a_lying_header_is_refused_before_reading(tmp_path, header, data, match):
    path = tmp_path / "bad.safetensors"
    write_raw(path, header, data)
    with pytest.raises(WeightsError, match=match):
        load_safetensors(path, CpuDevice())


def test_a_truncated_or_garbage_file_is_refused(tmp_path):
    p = tmp_path / "short.safetensors"
    p.write_bytes(b"\1\2\3")
    with pytest.raises(WeightsError, match="shorter"):
        read_header(p)
    write_raw(p, None, raw_header=b"{not json")
    with pytest.raises(WeightsError, match="not JSON"):
        read_header(p)
    p.write_bytes(struct.pack("<Q", 1 << 40))
    with pytest.raises(WeightsError, match="does not fit"):
        read_header(p)


def test_metadata_is_ignored_and_layout_aligns_every_tensor(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(3, dtype=torch.uint8), "b": torch.ones(5)}, str(path), metadata={"format": "pt"})
    entries = read_header(path)
    assert {e.name for e in entries} == {"a", "b"}  # __metadata__ is not a tensor
    assert [e.start for e in entries] == sorted(e.start for e in entries)  # file order
    offsets, total = layout(entries)
    assert all(o % ALIGN == 0 for o in offsets) and total >= sum(e.nbytes for e in entries)


def test_the_fast_loader_is_only_considered_on_cuda():
    assert fast_loader("cpu") is None and fast_loader("fake") is None
