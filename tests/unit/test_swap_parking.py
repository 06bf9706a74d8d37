"""Offload/restore as one pooled host buffer and one device block (serving/adapters/parking.py), and the
adapters that use it: the module, its Parameter objects, strides and outputs survive; a cycle does not
allocate (pin) a new host buffer; after a direct load or a restore the offload is one large copy."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from serving.adapters.base import LoadContext
from serving.adapters.parking import Parking, module_tensors
from serving.adapters.weights import load_safetensors
from serving.config import ModelSpec
from serving.vram.devices import CpuDevice


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)
        self.tail = nn.Linear(8, 4, bias=False)
        self.tail.weight = self.head.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.conv(x)).mean((2, 3)))


def net() -> nn.Module:
    torch.manual_seed(0)
    m = Net().eval()
    m.bn.running_mean.uniform_()
    return m


def test_offload_restore_keeps_objects_values_and_frees_the_device_copy():
    dev = CpuDevice()
    m = net()
    x = torch.randn(2, 3, 9, 9)
    ref = m(x)
    params = {id(p) for p in m.parameters()}
    before_ptrs = [t.data_ptr() for t in module_tensors(m)]
    p = Parking(module_tensors(m), dev)
    p.offload()
    assert p.parked and all(t.untyped_storage().data_ptr() == p.host.untyped_storage().data_ptr()
                            for t in module_tensors(m) if t.numel())  # every tensor now lives in the host buffer
    assert torch.equal(m(x), ref)
    p.restore()
    assert not p.parked and {id(q) for q in m.parameters()} == params
    assert [t.data_ptr() for t in module_tensors(m)] != before_ptrs  # a new block, not the old tensors
    assert torch.equal(m(x), ref)


def test_cycles_reuse_one_host_buffer_and_copy_in_one_piece_after_the_first():
    dev = CpuDevice()
    m = net()
    p = Parking(module_tensors(m), dev)
    n = len(module_tensors(m))
    p.offload()  # first: tensor by tensor (they are separate allocations)
    assert dev.copy_engine.copies == n
    p.restore()  # one copy into one block
    p.offload()  # the tensors are views of that block now: one copy
    p.restore()
    assert dev.copy_engine.copies == n + 3
    assert dev.host_pool.stats.allocations == 1 and dev.host_pool.stats.reuses == 1
    p.drop()
    assert dev.host_pool.stats.in_use_bytes == 0


def test_tied_weights_are_parked_once_and_stay_tied():
    dev = CpuDevice()
    m = net()
    p = Parking(module_tensors(m), dev)
    assert sum(t is m.head.weight for t in p.tensors) == 1
    p.offload()
    p.restore()
    assert m.tail.weight is m.head.weight


def test_channels_last_strides_survive_the_round_trip():
    dev = CpuDevice()
    m = net().to(memory_format=torch.channels_last)
    w = m.conv.weight
    strides = w.stride()
    assert not w.is_contiguous()
    p = Parking(module_tensors(m), dev)
    p.offload()
    p.restore()
    assert m.conv.weight.stride() == strides and torch.equal(m.conv.weight, w.detach().clone())


def test_a_non_dense_tensor_is_kept_by_value():
    dev = CpuDevice()
    base = torch.arange(20.0).view(4, 5)
    t = nn.Parameter(base[:, ::2])  # strided, not dense
    p = Parking([t], dev)
    p.offload()
    p.restore()
    assert torch.equal(t.detach(), base[:, ::2])


def test_a_direct_load_block_is_adopted_so_the_first_offload_is_one_copy(tmp_path):
    dev = CpuDevice()
    path = tmp_path / "net.safetensors"
    save_file({k: v.clone() for k, v in net().state_dict().items()}, str(path))
    state, block, _ = load_safetensors(path, dev)
    with torch.device("meta"):
        m = Net()
    m.load_state_dict(state, assign=True)
    m.eval()
    p = Parking(module_tensors(m), dev, block=block)
    assert p.block is block and p.total == block.numel()
    p.offload()
    assert dev.copy_engine.copies == 1
    x = torch.randn(1, 3, 9, 9)
    assert torch.allclose(m(x), net()(x))


def test_compact_moves_scattered_tensors_into_one_aligned_block_and_the_next_offload_is_one_copy():
    dev = CpuDevice()
    m = net()
    x = torch.randn(2, 3, 9, 9)
    ref = m(x)
    p = Parking(module_tensors(m), dev)
    p.compact()
    assert p.block is not None and p._is_block_layout()
    assert all((t.data_ptr() - p.block.data_ptr()) % 256 == 0 for t in module_tensors(m) if t.numel())
    assert torch.equal(m(x), ref)
    copies = dev.copy_engine.copies
    p.offload()
    assert dev.copy_engine.copies == copies + 1
    host_ptrs = [t.data_ptr() for t in module_tensors(m)]
    p.compact()  # parked: nothing moves
    assert p.parked and p.block is None and [t.data_ptr() for t in module_tensors(m)] == host_ptrs
    p.restore()
    block = p.block
    p.compact()
    assert p.block is block and torch.equal(m(x), ref)


def test_a_block_the_tensors_do_not_live_in_is_not_adopted():
    dev = CpuDevice()
    m = net()
    p = Parking(module_tensors(m), dev, block=torch.empty(10, dtype=torch.uint8))
    assert p.block is None


# ---------------------------------------------------------------------------------------- adapters
@pytest.fixture
def osnet_ctx(tmp_path):
    from serving.adapters.osnet import OSNet

    torch.manual_seed(0)
    save_file({**OSNet().state_dict(), "classifier.weight": torch.zeros(3, 3)}, str(tmp_path / "reid.safetensors"))
    spec = ModelSpec(family="osnet", task="embed", source={"safetensors": "reid.safetensors"}, vram_mb=2)
    return LoadContext("reid", spec, tmp_path, CpuDevice(), {"safetensors": tmp_path / "reid.safetensors"})


def test_osnet_loads_straight_into_one_block_and_restores_without_rebuilding(osnet_ctx):
    from PIL import Image

    from serving.adapters.osnet import OsnetAdapter

    a = OsnetAdapter(osnet_ctx)
    a.load()
    assert a.load_info.loader == "zoo-direct" and a.load_info.direct
    assert a.parking.block is not None  # the module adopted the load's block
    img = Image.new("RGB", (64, 128), (10, 200, 30))
    ref = a.predict([img])
    module, pool = a.model, osnet_ctx.device.host_pool
    for _ in range(3):
        a.offload()
        assert a.tier == "WARM"
        a.restore()
    assert a.model is module and a.predict([img]) == ref
    assert pool.stats.allocations == 1  # one host buffer for all three cycles
    a.unload()
    assert a.model is None and pool.stats.in_use_bytes == 0


def test_osnet_load_to_host_parks_the_weights_in_the_pool(osnet_ctx):
    from PIL import Image

    from serving.adapters.osnet import OsnetAdapter

    a = OsnetAdapter(osnet_ctx)
    a.load_to_host()
    assert a.tier == "WARM" and a.parking.parked and osnet_ctx.device.host_pool.stats.in_use_bytes > 0
    a.restore()
    assert a.predict([Image.new("RGB", (64, 128))])[0]["embedding_dimension"] > 0


def test_a_transformers_family_loads_with_device_map_and_parks_in_one_buffer(built_models):
    from PIL import Image

    from serving.adapters.registry import AdapterRegistry

    zoo = built_models("demographics_age")
    dev = CpuDevice()
    a = AdapterRegistry().create("demographics_age", zoo.models["demographics_age"], zoo.models_root, dev)
    a.load()
    assert a.load_info.loader == "transformers" and a.load_info.direct and "device_map" in a.load_info.note
    img = Image.new("RGB", (64, 64), (200, 10, 10))
    ref = a.predict([img])
    processor, module = a.processor, a.model
    a.offload()
    assert dev.host_pool.stats.in_use_bytes >= a.param_bytes() > 0
    a.restore()
    assert a.processor is processor and a.model is module and a.predict([img]) == ref
    assert dev.host_pool.stats.allocations == 1


@pytest.mark.parametrize("fmt", ["onnx", "pt"])
def test_yolo_restores_without_rebuilding_and_says_it_has_no_direct_load(built_models, fmt):
    from PIL import Image

    from serving.adapters.registry import AdapterRegistry
    from serving.adapters.yolo import YoloAdapter

    zoo = built_models("threat_detector")
    dev = CpuDevice()
    reg = AdapterRegistry({"yolo": lambda ctx: YoloAdapter(ctx, backends_available={fmt})})
    a = reg.create("threat_detector", zoo.models["threat_detector"], zoo.models_root, dev)
    a.load()
    assert a.format == fmt and not a.load_info.direct and "no direct path" in a.load_info.note
    img = Image.new("RGB", (96, 96), (30, 60, 90))
    ref = a.predict([img], confidence=0.0)
    be = a._backend()
    kept = be.session if fmt == "onnx" else be.model
    for _ in range(2):
        a.offload()
        a.restore()
    assert (a._backend().session if fmt == "onnx" else a._backend().model) is kept  # nothing rebuilt
    assert a.predict([img], confidence=0.0) == ref
    if fmt == "pt":
        assert dev.host_pool.stats.allocations == 1 and dev.copy_engine.copies > 0
    a.unload()
