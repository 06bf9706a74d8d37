"""Double-buffered staging (CopyEngine.staged) on CPU through a fake torch.cuda whose copies run only when an
event recorded after them (or their stream) is synchronized, as on a GPU where the host races ahead of the
copy engine: the bytes arrive intact (a staging buffer is never refilled under a pending copy), the host
fills chunk i+1 while the copy of chunk i is still pending (overlap), and a restore from a buffer the pool
could not pin goes through the staging path, while a pinned one is one large copy."""

from __future__ import annotations

import torch

from serving.adapters.parking import Parking
from serving.vram.pinned import CopyEngine, HostPool, MiB


class DeferredCuda:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.queue: list[tuple[str, object]] = []  # (label, run) of copies issued and not yet run
        self.active = None
        self.issued_total = 0
        self.current = DStream(self, "current")

    def Stream(self, device):  # noqa: N802 - torch's names
        return DStream(self, "side")

    def current_stream(self, device):
        return self.current

    def stream(self, s):
        cuda = self

        class Ctx:
            def __enter__(self):
                cuda.active = s

            def __exit__(self, *exc):
                cuda.active = None

        return Ctx()

    def Event(self):  # noqa: N802
        return DEvent(self)

    def run_until(self, n: int) -> None:
        """Run the first n copies still queued (in issue order)."""
        for _ in range(min(n, len(self.queue))):
            label, run = self.queue.pop(0)
            run()
            self.log.append(f"run {label}")


class DStream:
    def __init__(self, cuda: DeferredCuda, name: str) -> None:
        self.cuda, self.name, self.issued = cuda, name, 0

    def wait_stream(self, other: DStream) -> None:
        pass

    def synchronize(self) -> None:
        self.cuda.run_until(len(self.cuda.queue))
        self.cuda.log.append(f"sync {self.name}")


class DEvent:
    def __init__(self, cuda: DeferredCuda) -> None:
        self.cuda, self.mark = cuda, None

    def record(self, stream: DStream) -> None:
        self.mark = stream.issued  # copies issued on the stream so far

    def synchronize(self) -> None:
        done = self.cuda.issued_total - len(self.cuda.queue)
        self.cuda.run_until(self.mark - done)
        self.cuda.log.append(f"wait {self.mark}")


class DeferredDst:
    """A destination whose copy_ is queued on the active stream and reads its source only when it runs."""

    def __init__(self, cuda: DeferredCuda, dst: torch.Tensor, label: str) -> None:
        self.cuda, self.dst, self.label = cuda, dst, label

    def copy_(self, src: torch.Tensor, non_blocking: bool = False) -> None:
        assert non_blocking and self.cuda.active is not None, "staged copies are async, on the side stream"
        self.cuda.active.issued += 1
        self.cuda.issued_total += 1
        self.cuda.queue.append((self.label, lambda: self.dst.copy_(src)))
        self.cuda.log.append(f"issue {self.label}")


def chunks(cuda: DeferredCuda, source: torch.Tensor, dest: torch.Tensor, size: int):
    for i, start in enumerate(range(0, source.numel(), size)):
        n = min(size, source.numel() - start)

        def fill(stage, i=i, start=start, n=n):
            cuda.log.append(f"fill {i}")
            stage[:n].copy_(source[start:start + n])
            return [(DeferredDst(cuda, dest[start:start + n], str(i)), stage[:n])]

        yield fill


def test_staged_copies_overlap_the_next_fill_and_never_refill_a_busy_stage():
    cuda = DeferredCuda()
    engine = CopyEngine("cuda:0", cuda=cuda)
    source = torch.randint(0, 255, (10 * 1000,), dtype=torch.uint8)
    dest = torch.zeros_like(source)
    stages = [torch.empty(1000, dtype=torch.uint8), torch.empty(1000, dtype=torch.uint8)]
    engine.staged(chunks(cuda, source, dest, 1000), stages)
    assert torch.equal(dest, source)  # no stage was overwritten before its copy had read it
    log = cuda.log
    for i in range(9):  # overlap: chunk i+1 is filled while the copy of chunk i has not run yet
        assert log.index(f"fill {i + 1}") < log.index(f"run {i}"), log
    for i in range(2, 10):  # reuse: a stage is refilled only after the copy that last read it ran
        assert log.index(f"run {i - 2}") < log.index(f"fill {i}"), log
    assert log[-1] == "sync side" and engine.staged_chunks == 10 and engine.bytes_copied == source.numel()


def test_a_single_staging_buffer_would_serialise_fill_and_copy():
    """The same engine with one stage: every fill waits for the previous copy (no overlap) - the control that
    shows the overlap assertion above can fail."""
    cuda = DeferredCuda()
    source = torch.arange(3000, dtype=torch.int64).to(torch.uint8)
    dest = torch.zeros_like(source)
    CopyEngine("cuda:0", cuda=cuda).staged(chunks(cuda, source, dest, 1000), [torch.empty(1000, dtype=torch.uint8)])
    assert torch.equal(dest, source)
    assert cuda.log.index("run 0") < cuda.log.index("fill 1")


class CudaKind:
    kind, torch_device = "cuda", "cpu"

    def __init__(self, pool: HostPool, engine: CopyEngine) -> None:
        self.host_pool, self.copy_engine = pool, engine


class ImmediateCuda(DeferredCuda):
    """Stream API for real CPU tensors (their copy_ runs at once)."""


def refusing_pins(nbytes: int, pin: bool) -> torch.Tensor:
    if pin and nbytes > 2 * MiB:  # the large parking buffer cannot be pinned; the 2 MiB stages can
        raise RuntimeError("CUDA error: out of memory (cudaHostAlloc)")
    return torch.empty(nbytes, dtype=torch.uint8)


def test_a_restore_from_a_buffer_that_could_not_be_pinned_is_staged():
    pool = HostPool(pin=True, granularity=MiB, allocator=refusing_pins)
    dev = CudaKind(pool, CopyEngine("cuda:0", cuda=ImmediateCuda()))
    w = torch.randn(1_500_000)  # 6 MB
    ref = w.clone()
    p = Parking([w], dev, staging_bytes=MiB)
    p.offload()
    assert pool.stats.pin_failures == 1 and not pool.is_pinned(p.host)
    p.restore()
    assert torch.equal(w, ref) and dev.copy_engine.staged_chunks == 6  # 6 MB in 1 MiB chunks
    assert pool.stats.in_use_bytes == 0  # the stages and the parking buffer went back


def test_a_restore_from_a_pinned_buffer_is_one_large_copy():
    pool = HostPool(pin=True, granularity=MiB, allocator=lambda n, pin: torch.empty(n, dtype=torch.uint8))
    dev = CudaKind(pool, CopyEngine("cuda:0", cuda=ImmediateCuda()))
    w = torch.randn(1_500_000)
    ref = w.clone()
    p = Parking([w], dev, staging_bytes=MiB)
    p.offload()
    assert pool.is_pinned(p.host) and pool.stats.pin_failures == 0
    p.restore()
    assert torch.equal(w, ref) and dev.copy_engine.staged_chunks == 0
