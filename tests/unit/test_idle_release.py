"""Idle means idle: a sweep that demotes models hands host memory back through `Device.release_host_memory()`;
a sweep that changes nothing does not. The CUDA device empties its caching allocator and its pinned pool too
(a fake `torch.cuda` module stands in for the GPU). The RSS figures: tests/integration/test_idle_memory.py."""

from __future__ import annotations

from types import SimpleNamespace

from serving.vram.devices import CudaDevice
from tests.unit.test_manager import make, spec


async def test_sweep_releases_host_memory_only_when_it_demoted_something():
    m, _, dev, clock = make({"a": spec(100, keep_alive_s=10)}, host_mb=500)
    await m.preload("a")
    assert await m.sweep() == [] and dev.release_host_memory_calls == 0
    clock.advance(11)
    assert await m.sweep() == [("a", "WARM")] and dev.release_host_memory_calls == 1
    assert await m.sweep() == [] and dev.release_host_memory_calls == 1
    clock.advance(11)
    assert await m.sweep() == [("a", "COLD")] and dev.release_host_memory_calls == 2
    m.check_invariants()


def test_cuda_release_empties_the_allocator_and_the_pinned_pool():
    calls: list[str] = []
    cuda = SimpleNamespace(empty_cache=lambda: calls.append("empty_cache"),
                           empty_host_cache=lambda: calls.append("empty_host_cache"),
                           mem_get_info=lambda i: (1, 2))
    dev = CudaDevice(0, cuda=cuda, nvml=SimpleNamespace(nvmlDeviceGetHandleByIndex=lambda i: None))
    dev.release_host_memory()
    assert calls == ["empty_cache", "empty_host_cache"]

