"""CudaDevice's arithmetic and OOM detection through fake `torch.cuda` / NVML seams, and the manager
measuring footprints on a CUDA-like device (allocator counters, peak during warm-up)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from serving.adapters.base import Adapter
from serving.adapters.registry import AdapterRegistry
from serving.config import MB, ModelSpec
from serving.errors import DeviceOOM, InferenceOOM
from serving.vram.devices import CudaDevice
from serving.vram.manager import OnDemandModelManager, inline_runner


class FakeCudaOOM(RuntimeError):
    pass


class FakeCuda:
    """The few torch.cuda functions CudaDevice uses, over byte counters."""

    OutOfMemoryError = FakeCudaOOM

    def __init__(self, total: int, other: int = 0) -> None:
        self.total, self.other, self.allocated, self.peak, self.cached = total, other, 0, 0, 0
        self.empty_cache_calls = 0

    def mem_get_info(self, index: int) -> tuple[int, int]:
        return self.total - self.other - max(self.allocated, self.cached), self.total

    def memory_allocated(self, index: int) -> int:
        return self.allocated

    def max_memory_allocated(self, index: int) -> int:
        return self.peak

    def reset_peak_memory_stats(self, index: int) -> None:
        self.peak = self.allocated

    def empty_cache(self) -> None:
        self.empty_cache_calls += 1
        self.cached = self.allocated

    def get_device_name(self, index: int) -> str:
        return "NVIDIA Fake A10G"

    def alloc(self, n: int) -> None:
        if self.other + self.allocated + n > self.total:
            raise FakeCudaOOM("CUDA out of memory. Tried to allocate ...")
        self.allocated += n
        self.cached = max(self.cached, self.allocated)
        self.peak = max(self.peak, self.allocated)

    def free(self, n: int) -> None:
        self.allocated -= n


class FakeNvml:
    def __init__(self, procs):
        self.procs = procs

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return self.procs


def test_memory_views_and_other_tenants():
    cuda = FakeCuda(total=24_000 * MB, other=3_000 * MB)
    nvml = FakeNvml([SimpleNamespace(pid=os.getpid(), usedGpuMemory=500 * MB),
                     SimpleNamespace(pid=1, usedGpuMemory=3_000 * MB)])
    d = CudaDevice(1, cuda=cuda, nvml=nvml)
    assert d.process_bytes() == 500 * MB  # this process's own usage as NVML sees it (llama.cpp's buffers too)
    cuda.alloc(1_000 * MB)
    assert d.name == "cuda:1" and d.torch_device == "cuda:1" and d.pin_memory
    assert d.total_bytes() == 24_000 * MB and d.free_bytes() == 20_000 * MB
    assert d.allocated_bytes() == 1_000 * MB and d.other_tenants_bytes() == 3_000 * MB
    desc = d.describe()
    assert desc["model"] == "NVIDIA Fake A10G" and desc["other_tenants_bytes"] == 3_000 * MB


@pytest.mark.parametrize("exc, oom", [
    (FakeCudaOOM("CUDA out of memory"), True),
    (DeviceOOM("x"), True),
    (RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (RuntimeError("Expected all tensors to be on the same device"), False),  # not every RuntimeError is OOM
    (ValueError("out of memory"), False),
])
def test_is_oom_is_precise(exc, oom):
    assert CudaDevice(0, cuda=FakeCuda(1), nvml=None).is_oom(exc) is oom


class CudaLikeAdapter(Adapter):
    """Allocates through the fake allocator like a torch module would."""

    family = "cudalike"

    def __init__(self, ctx, cuda: FakeCuda, weights: int, activations: int) -> None:
        super().__init__(ctx)
        self.cuda, self.weights, self.activations, self.on_device = cuda, weights, activations, False
        self.format = "pt"

    def load(self):
        self.cuda.alloc(self.weights)
        self.on_device = True

    def warmup(self):
        self.cuda.alloc(self.activations)
        self.cuda.free(self.activations)

    def offload(self):
        self.cuda.free(self.weights)
        self.on_device = False

    def restore(self):
        self.cuda.alloc(self.weights)
        self.on_device = True

    def unload(self):
        if self.on_device:
            self.cuda.free(self.weights)
        self.on_device = False

    def param_bytes(self):
        return self.weights

    def predict(self, inputs, **options):
        self.cuda.alloc(options.get("activations", self.activations))
        self.cuda.free(options.get("activations", self.activations))
        return inputs


def make(cuda: FakeCuda, sizes: dict[str, tuple[int, int]], budget: int):
    registry = AdapterRegistry({"cudalike": lambda ctx: CudaLikeAdapter(ctx, cuda, *sizes[ctx.name])})
    specs = {n: ModelSpec(family="cudalike", task="t", source={"pt": "x"}, vram_mb=100) for n in sizes}
    device = CudaDevice(0, cuda=cuda, nvml=None)
    return OnDemandModelManager(specs, device=device, registry=registry, budget_bytes=budget,
                                host_cache_bytes=budget, runner=inline_runner, safety_factor=1.2,
                                admission_timeout_s=0.01)


async def test_manager_measures_load_delta_and_warmup_peak_on_cuda():
    cuda = FakeCuda(total=4_000 * MB)
    m = make(cuda, {"a": (300 * MB, 80 * MB)}, budget=2_000 * MB)
    await m.preload("a")
    e = m.entry("a")
    assert e.measured_bytes == 380 * MB  # weights + warm-up activations, not the declared 100 MB
    assert m.ledger.device.get("a") == 380 * MB and m.model_status("a")["format"] == "pt"
    await m.unload("a", to="warm")
    assert cuda.allocated == 0 and m.entry("a").tier == "WARM"


async def test_other_tenant_on_the_gpu_forces_eviction_although_the_budget_has_room():
    cuda = FakeCuda(total=1_000 * MB)
    m = make(cuda, {"a": (400 * MB, 0), "b": (400 * MB, 0)}, budget=2_000 * MB)
    await m.preload("a")
    cuda.other = 400 * MB  # another container grabbed memory on the same GPU
    await m.preload("b")
    assert m.entry("a").tier == "WARM" and m.entry("b").tier == "HOT" and cuda.allocated == 400 * MB


async def test_cuda_oom_during_inference_is_a_503_and_the_model_stays():
    cuda = FakeCuda(total=1_000 * MB)
    m = make(cuda, {"a": (400 * MB, 10 * MB)}, budget=900 * MB)
    with pytest.raises(InferenceOOM):
        async with m.use("a") as model:
            model.predict([1], activations=900 * MB)
    assert m.entry("a").tier == "HOT" and m.entry("a").refcount == 0


class FigureNvml(FakeNvml):
    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=37, memory=12)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 64

    def nvmlDeviceGetPowerUsage(self, handle):
        return 71_500  # milliwatts


def test_describe_carries_the_nvml_figures_health_reports():
    d = CudaDevice(0, cuda=FakeCuda(total=24_000 * MB, other=0), nvml=FigureNvml([]))
    desc = d.describe()
    assert desc["gpu_utilization"] == 37.0 and desc["temperature"] == 64.0 and desc["power_watts"] == 71.5
    bare = CudaDevice(0, cuda=FakeCuda(total=24_000 * MB, other=0), nvml=FakeNvml([])).describe()
    assert "gpu_utilization" not in bare  # a figure NVML does not give is absent, not invented
