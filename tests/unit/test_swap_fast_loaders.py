"""The optional fast safetensors loader seam (serving/adapters/fast_loaders.py) on CPU: which loader is chosen
with instanttensor / fastsafetensors present or absent (the `installed` seam), that a chosen loader really
runs a load and the footprint's LoadInfo names it, and that a failing one falls back to the direct loader
with the reason in the note (an OOM is not swallowed)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from serving.adapters.fast_loaders import FAST_LOADERS, choose_loader
from serving.adapters.weights import LoadInfo, load_safetensors
from serving.errors import DeviceOOM
from serving.vram.pinned import CopyEngine, HostPool


def present(*names: str):
    return lambda module: module in names


@pytest.mark.parametrize(("kind", "installed", "expected"), [
    ("cuda", (), None),
    ("cuda", ("fastsafetensors",), "fastsafetensors"),
    ("cuda", ("instanttensor",), "instanttensor"),
    ("cuda", ("instanttensor", "fastsafetensors"), "instanttensor"),  # preference order
    ("cpu", ("instanttensor", "fastsafetensors"), None),  # only on CUDA
    ("fake", ("instanttensor", "fastsafetensors"), None),
])
def test_choose_loader(kind, installed, expected):
    assert choose_loader(kind, installed=present(*installed)) == expected
    assert FAST_LOADERS == ("instanttensor", "fastsafetensors")


def test_the_real_probe_finds_neither_here():
    """Neither package is a dependency: on this machine the direct loader runs."""
    assert choose_loader("cuda") is None


class CudaKindDevice:
    kind, torch_device, index = "cuda", "cpu", 0

    def __init__(self) -> None:
        self.host_pool = HostPool(pin=False)
        self.copy_engine = CopyEngine("cpu")

    def is_oom(self, exc: BaseException) -> bool:
        return isinstance(exc, DeviceOOM)


@pytest.fixture
def st_file(tmp_path):
    g = torch.Generator().manual_seed(3)
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.randn(4, 5, generator=g), "b": torch.randn(7, generator=g).half()}, str(path))
    return path


class FakeLoader:
    """A stand-in for instanttensor's loader: the safetensors library's tensors, each its own allocation."""

    def __init__(self, fail: BaseException | None = None, name: str = "instanttensor") -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.fail, self.name = fail, name

    def __call__(self, path, device, names):
        self.calls.append((str(path), list(names)))
        if self.fail is not None:
            raise self.fail
        ref = load_file(str(path))
        return {n: ref[n] for n in names}, None, LoadInfo(self.name, True, f"fake {self.name}")


def test_an_installed_fast_loader_runs_on_cuda_and_is_recorded(st_file):
    fake = FakeLoader()
    dev = CudaKindDevice()
    got, owner, info = load_safetensors(st_file, dev, installed=present("instanttensor"),
                                        fast_impls={"instanttensor": fake}, keep=lambda n: n != "b")
    assert fake.calls == [(str(st_file), ["a"])] and set(got) == {"a"} and owner is None
    assert info.loader == "instanttensor" and info.direct
    assert dev.copy_engine.copies == 0  # the project's staging path did not run


def test_without_a_fast_loader_the_staged_direct_path_runs(st_file):
    dev = CudaKindDevice()
    got, _, info = load_safetensors(st_file, dev, installed=present())
    assert info.loader == "zoo-direct" and "double-buffered" in info.note
    ref = load_file(str(st_file))
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_a_failing_fast_loader_falls_back_and_says_why(st_file):
    fake = FakeLoader(fail=RuntimeError("cuFile driver missing"))
    got, _, info = load_safetensors(st_file, CudaKindDevice(), installed=present("instanttensor"),
                                    fast_impls={"instanttensor": fake})
    assert fake.calls and info.loader == "zoo-direct" and info.direct
    assert info.note.startswith("instanttensor failed (RuntimeError: cuFile driver missing); fell back to zoo-direct")
    ref = load_file(str(st_file))
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_an_oom_in_the_fast_loader_is_not_hidden_by_the_fallback(st_file):
    fake = FakeLoader(fail=DeviceOOM("out of memory"))
    with pytest.raises(DeviceOOM):
        load_safetensors(st_file, CudaKindDevice(), installed=present("instanttensor"),
                         fast_impls={"instanttensor": fake})


def test_use_fast_false_skips_the_fast_loader(st_file):
    fake = FakeLoader()
    _, _, info = load_safetensors(st_file, CudaKindDevice(), installed=present("instanttensor"),
                                  fast_impls={"instanttensor": fake}, use_fast=False)
    assert not fake.calls and info.loader == "zoo-direct"


def test_a_failing_first_loader_hands_over_to_the_next_installed_one(st_file):
    broken, fast = FakeLoader(fail=RuntimeError("no io_uring")), FakeLoader(name="fastsafetensors")
    _, _, info = load_safetensors(st_file, CudaKindDevice(), installed=present("instanttensor", "fastsafetensors"),
                                  fast_impls={"instanttensor": broken, "fastsafetensors": fast})
    assert broken.calls and fast.calls and info.loader == "fastsafetensors"
