"""The warm tier's host pool (reuse instead of re-pinning, bounded) and the copy engine's stream ordering,
through fake allocator and fake torch.cuda seams (no GPU here)."""

from __future__ import annotations

import pytest
import torch

from serving.vram.devices import CpuDevice, CudaDevice, FakeDevice
from serving.vram.pinned import CopyEngine, HostPool, MiB


class CountingAlloc:
    """The pool's allocator seam: plain host tensors, every call recorded (a pin on CUDA)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, nbytes: int, pin: bool) -> torch.Tensor:
        self.calls.append((nbytes, pin))
        return torch.empty(nbytes, dtype=torch.uint8)


def test_a_swap_cycle_reuses_the_pinned_buffer_instead_of_pinning_again():
    alloc = CountingAlloc()
    pool = HostPool(pin=True, granularity=MiB, allocator=alloc)
    for _ in range(5):  # offload (acquire) ... restore (release), five times
        buf = pool.acquire(3 * MiB + 5)
        assert buf.numel() >= 3 * MiB + 5
        pool.release(buf)
    assert alloc.calls == [(4 * MiB, True)]  # one pin, rounded to the granularity
    assert pool.stats.allocations == 1 and pool.stats.reuses == 4
    assert pool.stats.in_use_bytes == 0 and pool.stats.cached_bytes == 4 * MiB


def test_best_fit_never_hands_out_a_buffer_far_larger_than_asked():
    alloc = CountingAlloc()
    pool = HostPool(pin=False, granularity=MiB, max_waste=1.5, allocator=alloc)
    big, small = pool.acquire(64 * MiB), pool.acquire(2 * MiB)
    pool.release(big)
    pool.release(small)
    assert pool.acquire(2 * MiB) is small  # the small one, not the 64 MiB one
    assert pool.acquire(2 * MiB) is not big  # 64 MiB for 2 MiB would waste 32x: a new buffer instead
    assert len(alloc.calls) == 3
    assert pool.acquire(60 * MiB) is big  # within 1.5x


def test_two_models_parked_at_once_hold_two_buffers():
    pool = HostPool(pin=False, granularity=MiB, allocator=CountingAlloc())
    a, b = pool.acquire(MiB), pool.acquire(MiB)
    assert a is not b and pool.stats.in_use_bytes == 2 * MiB


def test_the_pool_stays_within_its_bound_by_freeing_instead_of_caching():
    alloc = CountingAlloc()
    pool = HostPool(pin=True, max_bytes=5 * MiB, granularity=MiB, allocator=alloc)
    a, b = pool.acquire(3 * MiB), pool.acquire(2 * MiB)
    pool.release(a)
    assert pool.stats.cached_bytes == 3 * MiB
    c = pool.acquire(MiB)  # a is 3x too large for it: a new buffer, and a (cached) is dropped to make room
    assert c is not a and pool.stats.cached_bytes == 0 and pool.stats.frees == 1
    pool.release(b)
    pool.release(c)
    assert pool.stats.in_use_bytes == 0 and pool.stats.cached_bytes == 3 * MiB  # b and c, within the bound


def test_clear_frees_every_cached_buffer_and_reports_its_bytes():
    pool = HostPool(pin=True, granularity=MiB, allocator=CountingAlloc())
    for n in (1, 2, 3):
        pool.release(pool.acquire(n * MiB))
    cached = pool.stats.cached_bytes
    assert cached > 0 and pool.clear() == cached and pool.stats.cached_bytes == 0


def test_releasing_a_foreign_or_twice_released_buffer_is_an_error():
    pool = HostPool(pin=False, allocator=CountingAlloc())
    buf = pool.acquire(10)
    pool.release(buf)
    with pytest.raises(ValueError, match="did not hand out"):
        pool.release(buf)
    with pytest.raises(ValueError):
        pool.release(torch.empty(10, dtype=torch.uint8))


def test_the_default_allocator_pins_only_when_asked():
    pool = HostPool(pin=False)
    buf = pool.acquire(100)
    assert buf.dtype == torch.uint8 and not buf.is_pinned()


# ---------------------------------------------------------------------------------------- copy engine
class FakeStream:
    def __init__(self, log: list, name: str) -> None:
        self.log, self.name = log, name

    def wait_stream(self, other: FakeStream) -> None:
        self.log.append(f"{self.name} waits {other.name}")

    def synchronize(self) -> None:
        self.log.append(f"sync {self.name}")


class FakeStreamCuda:
    """torch.cuda's stream functions over a log, so the ordering is checked without a GPU."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.current = FakeStream(self.log, "current")
        self.created = 0
        self.active: str | None = None

    def Stream(self, device: str) -> FakeStream:  # noqa: N802 - torch's name
        self.created += 1
        return FakeStream(self.log, f"side{self.created}")

    def current_stream(self, device: str) -> FakeStream:
        return self.current

    def stream(self, s: FakeStream):
        cuda = self

        class Ctx:
            def __enter__(self) -> None:
                cuda.active = s.name
                cuda.log.append(f"enter {s.name}")

            def __exit__(self, *exc: object) -> None:
                cuda.active = None
                cuda.log.append(f"exit {s.name}")

        return Ctx()


class LoggingTensor:
    """dst of a copy: records the stream it was issued on and non_blocking."""

    def __init__(self, cuda: FakeStreamCuda, src_bytes: int) -> None:
        self.cuda, self.n = cuda, src_bytes

    def copy_(self, src: torch.Tensor, non_blocking: bool = False) -> None:
        self.cuda.log.append(f"copy {src.numel()} on {self.cuda.active} nb={non_blocking}")


def test_copies_run_on_a_side_stream_ordered_after_current_work_and_finished_on_return():
    cuda = FakeStreamCuda()
    engine = CopyEngine("cuda:0", cuda=cuda)
    src = torch.zeros(1000, dtype=torch.uint8)
    engine.copy([(LoggingTensor(cuda, 1000), src), (LoggingTensor(cuda, 1000), src)])
    assert cuda.log == ["side1 waits current", "enter side1", "copy 1000 on side1 nb=True",
                        "copy 1000 on side1 nb=True", "exit side1", "current waits side1", "sync side1"]
    engine.copy([(LoggingTensor(cuda, 1000), src)])
    assert cuda.created == 1  # one side stream, reused
    assert engine.async_copies and engine.copies == 3 and engine.bytes_copied == 3000


def test_without_cuda_the_engine_copies_synchronously():
    engine = CopyEngine("cpu")
    dst, src = torch.zeros(8), torch.arange(8.0)
    engine.copy([(dst, src)])
    assert torch.equal(dst, src) and not engine.async_copies and engine.bytes_copied == 32


def test_cuda_device_gets_its_copy_engine_and_pool_through_its_seams():
    cuda = FakeStreamCuda()
    pool = HostPool(pin=True, allocator=CountingAlloc())
    dev = CudaDevice(0, cuda=cuda, nvml=None, host_pool=pool)
    assert dev.host_pool is pool and dev.pin_memory
    dev.copy_engine.copy([(LoggingTensor(cuda, 4), torch.zeros(4, dtype=torch.uint8))])
    assert "copy 4 on side1 nb=True" in cuda.log


@pytest.mark.parametrize("device", [CpuDevice(), FakeDevice(1 << 30)], ids=["cpu", "fake"])
def test_host_devices_have_an_unpinned_pool_and_synchronous_copies(device):
    assert not device.host_pool.pin and not device.copy_engine.async_copies
    assert device.host_pool is device.host_pool and device.copy_engine is device.copy_engine


def test_a_refused_pin_hands_out_a_pageable_buffer_and_says_so():
    calls: list[tuple[int, bool]] = []

    def alloc(nbytes: int, pin: bool) -> torch.Tensor:
        calls.append((nbytes, pin))
        if pin and nbytes > MiB:
            raise RuntimeError("CUDA error: out of memory (cudaHostAlloc refused: locked-memory limit)")
        return torch.empty(nbytes, dtype=torch.uint8)

    pool = HostPool(pin=True, granularity=MiB, allocator=alloc)
    big, small = pool.acquire(3 * MiB), pool.acquire(MiB)
    assert calls == [(3 * MiB, True), (3 * MiB, False), (MiB, True)]
    assert not pool.is_pinned(big) and pool.is_pinned(small) and pool.stats.pin_failures == 1
    pool.release(big)
    assert pool.acquire(3 * MiB) is big and not pool.is_pinned(big)  # reused, still known as pageable
    unpinned = HostPool(pin=False, allocator=lambda n, pin: (_ for _ in ()).throw(RuntimeError("no memory")))
    with pytest.raises(RuntimeError):  # without pinning there is nothing to fall back to
        unpinned.acquire(10)


def test_staged_without_cuda_copies_each_chunk_synchronously():
    engine = CopyEngine("cpu")
    src, dst = torch.arange(10, dtype=torch.uint8), torch.zeros(10, dtype=torch.uint8)
    stage = torch.empty(4, dtype=torch.uint8)

    def chunk(lo: int, hi: int):
        def fill(s):
            s[:hi - lo].copy_(src[lo:hi])
            return [(dst[lo:hi], s[:hi - lo])]
        return fill

    engine.staged([chunk(0, 4), chunk(4, 8), chunk(8, 10)], [stage])
    assert torch.equal(dst, src) and engine.staged_chunks == 3 and engine.bytes_copied == 10
