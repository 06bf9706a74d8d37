"""Device seams: the only code that asks a device how much memory it has and uses.

- `CudaDevice`: torch.cuda.mem_get_info (free memory, all tenants), memory_allocated / max_memory_allocated
  (this process), pynvml for per-process usage of other tenants when the driver allows it.
- `CpuDevice`: host RAM; allocations are measured as parameter bytes (no allocator counters on CPU).
- `FakeDevice`: a byte budget with owners, scripted out-of-memory, other tenants, for tests and the
  policy benchmark. Thread-safe: adapters call it from worker threads.
"""

from __future__ import annotations

import abc
import ctypes
import ctypes.util
import gc
import os
import sys
import threading
from typing import Any

from serving.errors import DeviceOOM
from serving.vram.pinned import CopyEngine, HostPool


class Device(abc.ABC):
    """Memory view of one device."""

    kind: str = ""
    #: True when allocated_bytes() tracks this process's allocations (CUDA, fake); False on CPU.
    measures_allocations: bool = True
    #: True when host copies should be pinned (page-locked) for fast H2D restores.
    pin_memory: bool = False

    def __init__(self, name: str) -> None:
        self.name = name
        self._host_pool: HostPool | None = None
        self._copy_engine: CopyEngine | None = None

    @property
    def torch_device(self) -> str:
        return self.name

    @property
    def host_pool(self) -> HostPool:
        """Host buffers of this device's warm tier (pinned on CUDA, reused across offloads)."""
        if self._host_pool is None:
            self._host_pool = HostPool(pin=self.pin_memory)
        return self._host_pool

    @property
    def copy_engine(self) -> CopyEngine:
        """Large host <-> device copies (a side stream on CUDA)."""
        if self._copy_engine is None:
            self._copy_engine = CopyEngine.for_device(self.torch_device)
        return self._copy_engine

    @abc.abstractmethod
    def total_bytes(self) -> int: ...

    @abc.abstractmethod
    def free_bytes(self) -> int:
        """Memory really free on the device now, other tenants included."""

    def allocated_bytes(self) -> int:
        return 0

    def reset_peak(self) -> None:
        return None

    def peak_bytes(self) -> int:
        return self.allocated_bytes()

    def empty_cache(self) -> None:
        return None

    def is_oom(self, exc: BaseException) -> bool:
        return isinstance(exc, (DeviceOOM, MemoryError))

    def release_host_memory(self) -> bool:
        """Hand freed host memory back to the OS once models have left (the idle sweeper calls it): collect
        garbage, then glibc's malloc_trim(0) returns the allocator's free pages. True when trimmed."""
        gc.collect()
        return malloc_trim()

    def describe(self) -> dict[str, Any]:
        """Probes the device (blocking on CUDA/NVML): the manager calls it through its runner and caches it."""
        return {"name": self.name, "kind": self.kind, "total_bytes": self.total_bytes(),
                "free_bytes": self.free_bytes()}

    @property
    def hardware_name(self) -> str:
        """What the hardware is (e.g. "NVIDIA L4", "cpu"): the key footprints are measured and stored under."""
        return self.kind


_LIBC: Any = None


def malloc_trim() -> bool:
    """glibc's malloc_trim(0): free heap pages go back to the OS. False where there is no glibc (musl, macOS)."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if not _LIBC:
        return False
    return bool(_LIBC.malloc_trim(0))


class CpuDevice(Device):
    kind = "cpu"
    measures_allocations = False

    def __init__(self) -> None:
        super().__init__("cpu")

    def total_bytes(self) -> int:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    def free_bytes(self) -> int:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:  # pragma: no cover - non-Linux
            pass
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")

    @property
    def hardware_name(self) -> str:
        return "cpu"


class CudaDevice(Device):
    """A CUDA GPU seen through torch's caching allocator and NVML.

    `cuda` (default `torch.cuda`) and `nvml` (default `pynvml`, optional) are seams: tests pass fakes
    with the same functions, so the arithmetic here runs without a GPU. The copy engine runs its copies
    on a side stream of `cuda`; `host_pool` (default: a pinned `HostPool`) is a seam too.
    """

    kind = "cuda"
    pin_memory = True

    def __init__(self, index: int = 0, *, cuda: Any = None, nvml: Any = None,
                 host_pool: HostPool | None = None) -> None:
        super().__init__(f"cuda:{index}")
        if cuda is None:  # pragma: no cover - the real module on a GPU box
            import torch

            cuda = torch.cuda
        self.index = index
        self._cuda = cuda
        self._host_pool = host_pool
        self._copy_engine = CopyEngine(self.name, cuda=cuda)
        self._nvml = nvml
        self._handle = None
        if nvml is None:
            try:  # pragma: no cover - NVML is missing in some containers: torch alone still works
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception:
                self._nvml = None
        if self._nvml is not None:
            try:
                self._handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
            except Exception:
                self._nvml = None

    def total_bytes(self) -> int:
        return int(self._cuda.mem_get_info(self.index)[1])

    def free_bytes(self) -> int:
        return int(self._cuda.mem_get_info(self.index)[0])

    def allocated_bytes(self) -> int:
        return int(self._cuda.memory_allocated(self.index))

    def reset_peak(self) -> None:
        self._cuda.reset_peak_memory_stats(self.index)

    def peak_bytes(self) -> int:
        return int(self._cuda.max_memory_allocated(self.index))

    def empty_cache(self) -> None:
        # Called by the manager only, after an OOM on load or after unloading: never in generic code.
        self._cuda.empty_cache()

    def release_host_memory(self) -> bool:
        """Also empty the caching allocator and the pinned (page-locked) host pool of parked weights."""
        gc.collect()
        self._cuda.empty_cache()
        empty_host = getattr(self._cuda, "empty_host_cache", None)
        torch = sys.modules.get("torch")
        if empty_host is None and torch is not None and hasattr(torch, "accelerator"):
            empty_host = getattr(torch.accelerator, "empty_host_cache", None)
        if empty_host is not None:
            empty_host()
        return malloc_trim()

    def is_oom(self, exc: BaseException) -> bool:
        if isinstance(exc, (DeviceOOM, MemoryError, self._cuda.OutOfMemoryError)):
            return True
        # onnxruntime / TensorRT / cuBLAS report OOM as plain runtime errors with these messages
        msg = str(exc).lower()
        return isinstance(exc, RuntimeError) and any(
            k in msg for k in ("out of memory", "failed to allocate memory", "cudaerrormemoryallocation"))

    @property
    def hardware_name(self) -> str:
        return str(self._cuda.get_device_name(self.index))

    def _nvml_process_bytes(self) -> dict[int, int]:
        """{pid: bytes} of the compute processes on this GPU (NVML), empty when NVML cannot tell."""
        if self._nvml is None:
            return {}
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except Exception:
            return {}
        out: dict[int, int] = {}
        for p in procs:
            out[p.pid] = out.get(p.pid, 0) + (p.usedGpuMemory or 0)
        return out

    def process_bytes(self) -> int:
        """Bytes this process uses on this GPU as NVML sees them (allocations outside torch included, e.g.
        llama.cpp's buffers), 0 when NVML cannot tell."""
        return self._nvml_process_bytes().get(os.getpid(), 0)

    def other_tenants_bytes(self) -> int:
        """Bytes used on this GPU by other processes (NVML), 0 when NVML cannot tell."""
        me = os.getpid()
        return sum(b for pid, b in self._nvml_process_bytes().items() if pid != me)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(model=self.hardware_name, allocated_bytes=self.allocated_bytes(),
                 other_tenants_bytes=self.other_tenants_bytes(), **self.nvml_figures())
        return d

    def nvml_figures(self) -> dict[str, float]:
        """What NVML says of the GPU: gpu_utilization (%), temperature (C), power_watts; {} without NVML."""
        if self._nvml is None:
            return {}
        out: dict[str, float] = {}
        probes = (("gpu_utilization", lambda h: self._nvml.nvmlDeviceGetUtilizationRates(h).gpu),
                  ("temperature", lambda h: self._nvml.nvmlDeviceGetTemperature(h, 0)),  # 0 = NVML_TEMPERATURE_GPU
                  ("power_watts", lambda h: self._nvml.nvmlDeviceGetPowerUsage(h) / 1000.0))
        for key, probe in probes:
            try:
                out[key] = float(probe(self._handle))
            except Exception:  # a figure this GPU or driver does not report
                continue
        return out


class FakeDevice(Device):
    """A byte budget with named owners; scripted OOM and other tenants. For tests and simulation."""

    kind = "fake"

    def __init__(self, capacity_bytes: int, *, name: str = "fake:0", other_tenants_bytes: int = 0) -> None:
        super().__init__(name)
        self.capacity = int(capacity_bytes)
        self.other_tenants = int(other_tenants_bytes)
        self._lock = threading.Lock()
        self._alloc: dict[str, int] = {}
        self._peak = 0
        self.fail_next_allocs = 0  # scripted OOMs: the next N allocate() calls raise DeviceOOM
        self.empty_cache_calls = 0
        self.release_host_memory_calls = 0

    @property
    def torch_device(self) -> str:
        return "cpu"

    def total_bytes(self) -> int:
        return self.capacity

    def free_bytes(self) -> int:
        with self._lock:
            return self.capacity - self.other_tenants - sum(self._alloc.values())

    def allocated_bytes(self) -> int:
        with self._lock:
            return sum(self._alloc.values())

    def reset_peak(self) -> None:
        with self._lock:
            self._peak = sum(self._alloc.values())

    def peak_bytes(self) -> int:
        with self._lock:
            return self._peak

    def empty_cache(self) -> None:
        self.empty_cache_calls += 1

    def release_host_memory(self) -> bool:
        self.release_host_memory_calls += 1
        return False

    def allocate(self, owner: str, nbytes: int) -> None:
        with self._lock:
            if self.fail_next_allocs > 0:
                self.fail_next_allocs -= 1
                raise DeviceOOM(f"scripted out of memory allocating {nbytes} bytes for {owner}")
            used = sum(self._alloc.values()) + self.other_tenants
            if used + nbytes > self.capacity:
                raise DeviceOOM(f"out of memory: {owner} needs {nbytes}, {self.capacity - used} free")
            self._alloc[owner] = self._alloc.get(owner, 0) + int(nbytes)
            self._peak = max(self._peak, sum(self._alloc.values()))

    def release(self, owner: str, nbytes: int | None = None) -> None:
        with self._lock:
            if nbytes is None:
                self._alloc.pop(owner, None)
            else:
                left = self._alloc.get(owner, 0) - int(nbytes)
                if left > 0:
                    self._alloc[owner] = left
                else:
                    self._alloc.pop(owner, None)

    def owned(self, owner: str) -> int:
        with self._lock:
            return self._alloc.get(owner, 0)


def device_from_spec(spec: str, gpu: int = 0) -> Device:
    """`cpu`, `cuda:N`, or `auto` (cuda:<gpu> when CUDA is present, else cuda:0 when any, else cpu)."""
    spec = spec.strip().lower()
    if spec == "cpu":
        return CpuDevice()
    if spec.startswith("cuda"):
        idx = int(spec.split(":", 1)[1]) if ":" in spec else gpu
        return CudaDevice(idx)
    if spec == "auto":
        try:
            import torch

            if torch.cuda.is_available():
                n = torch.cuda.device_count()
                return CudaDevice(gpu if gpu < n else 0)
        except Exception:
            pass
        return CpuDevice()
    raise ValueError(f"unknown device {spec!r}: use cpu, cuda:N or auto")
