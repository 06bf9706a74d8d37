"""Host buffers for the warm tier: a reusable pool of (pinned on CUDA) byte buffers, and the copy engine.

Pinning (cudaHostAlloc) costs about as much as copying the bytes once, so pinning on every offload would
halve the offload rate. `HostPool` pins a buffer once and hands it out again: a model parked in the warm
tier holds one flat buffer from the pool; its restore gives the buffer back; the next offload of any model
of a similar size takes it again without pinning. `stats` counts allocations (pins) and reuses so tests
and the acceptance run can see that a swap cycle does not re-pin.

Bounded: buffers in use plus cached free buffers stay under `max_bytes` where possible; a released buffer
that would exceed it is freed instead of cached (in-use bytes are bounded by the manager's host-tier
ledger, not here). Best fit: a request takes the smallest free buffer at least as large and at most
`max_waste` times larger; new buffers are rounded up to `granularity` so sizes repeat.

When pinning is refused (cudaHostAlloc fails under a locked-memory limit, `ulimit -l` in a container), the
pool hands out a pageable buffer instead and counts it (`stats.pin_failures`); `is_pinned(buf)` says which
a buffer is, so a restore from it goes through the double-buffered staging below rather than a pageable
copy the driver would stage itself, one bounce buffer at a time.

`CopyEngine` does the large copies host <-> device: on CUDA on a side stream (ordered after the work
already queued on the current stream, and waited for before returning, so callers see a finished copy and
the default stream stays free for other models' inference), elsewhere a plain `copy_`. `staged` is the
double-buffered path for sources that are not pinned (a file being read, a pageable buffer): two pinned
staging buffers; the host fills chunk i+1 into one while the H2D copy of chunk i from the other runs on a
second side stream; before a staging buffer is filled again the host waits for the event recorded after
the copy that last read it. The stream functions are a seam (`cuda`, default `torch.cuda`: `Stream`,
`current_stream`, `stream`, `Event`): tests pass fakes and run the ordering logic on CPU.

Thread-safe: adapters offload and restore from worker threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

MiB = 1 << 20
#: pool bytes beyond the host-tier budget: the staging buffers of direct loads (2 x 64 MiB)
STAGING_RESERVE = 128 * MiB


@dataclass
class PoolStats:
    """Counters of a `HostPool` (bytes are buffer sizes, not request sizes)."""

    allocations: int = 0  # new buffers (on CUDA: pins)
    reuses: int = 0  # requests served from a cached buffer
    frees: int = 0  # buffers dropped (over the bound, or `clear`)
    in_use_bytes: int = 0
    cached_bytes: int = 0
    pinned: bool = False
    pin_failures: int = 0  # pinning refused: a pageable buffer was handed out instead


class HostPool:
    """Reusable host byte buffers (torch uint8), pinned when `pin`; see the module docstring.

    `allocator(nbytes, pin)` is a seam returning a 1-D uint8 tensor of that many bytes (default
    `torch.empty(..., pin_memory=pin)`)."""

    def __init__(self, *, pin: bool, max_bytes: int = 8 << 30, granularity: int = 2 * MiB,
                 max_waste: float = 1.5, allocator: Any = None) -> None:
        self.pin = pin
        self.max_bytes = int(max_bytes)
        self.granularity = max(int(granularity), 1)
        self.max_waste = float(max_waste)
        self._alloc = allocator or _torch_alloc
        self._lock = threading.Lock()
        self._free: list[Any] = []  # cached buffers, sorted by size
        self._in_use: dict[int, int] = {}  # id(buffer) -> size
        self._pageable: set[int] = set()  # ids of the buffers that could not be pinned (pin=True only)
        self.stats = PoolStats(pinned=pin)

    def rounded(self, nbytes: int) -> int:
        g = self.granularity
        return max(-(-int(nbytes) // g) * g, g)

    def acquire(self, nbytes: int) -> Any:
        """A buffer of at least `nbytes` (its extra tail is unused); give it back with `release`."""
        with self._lock:
            for i, buf in enumerate(self._free):
                size = buf.numel()
                if size >= nbytes and size <= max(self.max_waste * nbytes, self.rounded(nbytes)):
                    del self._free[i]
                    self.stats.cached_bytes -= size
                    self.stats.reuses += 1
                    self._mark_used(buf)
                    return buf
            size = self.rounded(nbytes)
            # make room for the new buffer from the cache first (largest cached first)
            while self._free and self.stats.in_use_bytes + self.stats.cached_bytes + size > self.max_bytes:
                dropped = self._free.pop()
                self.stats.cached_bytes -= dropped.numel()
                self.stats.frees += 1
        pinned = self.pin
        try:
            buf = self._alloc(size, self.pin)  # outside the lock: pinning takes a while
        except RuntimeError:
            if not self.pin:
                raise
            buf, pinned = self._alloc(size, False), False  # locked-memory limit: pageable, staged on restore
        with self._lock:
            self.stats.allocations += 1
            if self.pin and not pinned:
                self.stats.pin_failures += 1
                self._pageable.add(id(buf))
            self._mark_used(buf)
        return buf

    def release(self, buf: Any) -> None:
        """Give a buffer back: cached for the next `acquire` when within the bound, else freed."""
        with self._lock:
            size = self._in_use.pop(id(buf), None)
            if size is None:
                raise ValueError("release of a buffer this pool did not hand out (or released twice)")
            self.stats.in_use_bytes -= size
            if self.stats.in_use_bytes + self.stats.cached_bytes + size <= self.max_bytes:
                self._free.append(buf)
                self._free.sort(key=lambda b: b.numel())
                self.stats.cached_bytes += size
            else:
                self.stats.frees += 1
                self._pageable.discard(id(buf))

    def is_pinned(self, buf: Any) -> bool:
        """True when `buf` (handed out by this pool) is page-locked memory."""
        with self._lock:
            return self.pin and id(buf) not in self._pageable

    def clear(self) -> int:
        """Free every cached buffer (e.g. when the service goes idle); returns the bytes freed."""
        with self._lock:
            freed = self.stats.cached_bytes
            self.stats.frees += len(self._free)
            for buf in self._free:
                self._pageable.discard(id(buf))
            self._free.clear()
            self.stats.cached_bytes = 0
            return freed

    def _mark_used(self, buf: Any) -> None:
        self._in_use[id(buf)] = buf.numel()
        self.stats.in_use_bytes += buf.numel()


def _torch_alloc(nbytes: int, pin: bool) -> Any:
    import torch

    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)


class CopyEngine:
    """Large host <-> device copies; on CUDA on a side stream (module docstring).

    `cuda` is the torch.cuda-like seam (`Stream(device)`, `current_stream(device)`, `stream(s)` context);
    None means synchronous copies (CPU and the fake device)."""

    def __init__(self, device: str, *, cuda: Any = None) -> None:
        self.device = device
        self._cuda = cuda
        self._side: Any = None
        self._staging: Any = None  # the stream of `staged` transfers (a file read must not hold up restores)
        self._lock = threading.Lock()
        self._staging_lock = threading.Lock()
        self.copies = 0
        self.bytes_copied = 0
        self.staged_chunks = 0

    @classmethod
    def for_device(cls, torch_device: str) -> CopyEngine:
        if torch_device.startswith("cuda"):  # pragma: no cover - needs a GPU
            import torch

            return cls(torch_device, cuda=torch.cuda)
        return cls(torch_device)

    @property
    def async_copies(self) -> bool:
        return self._cuda is not None

    def _side_stream(self) -> Any:
        if self._side is None:
            self._side = self._cuda.Stream(self.device)
        return self._side

    def copy(self, pairs: list[tuple[Any, Any]]) -> None:
        """`dst.copy_(src)` for each (dst, src) pair, finished when this returns.

        On CUDA: the side stream first waits for the current stream (whatever wrote the sources is done),
        then runs every copy non-blocking, and is synchronized before returning; the current stream also
        waits for it, so later kernels on it see the copied bytes."""
        nbytes = sum(int(s.numel()) * int(s.element_size()) for _, s in pairs)
        if self._cuda is None:
            for dst, src in pairs:
                dst.copy_(src)
        else:
            with self._lock:  # one side stream per engine; copies of two models are serialized on it
                side = self._side_stream()
                current = self._cuda.current_stream(self.device)
                side.wait_stream(current)
                ctx = self._cuda.stream(side) if hasattr(self._cuda, "stream") else contextlib.nullcontext()
                with ctx:
                    for dst, src in pairs:
                        dst.copy_(src, non_blocking=True)
                current.wait_stream(side)
                side.synchronize()
        self.copies += len(pairs)
        self.bytes_copied += nbytes

    def staged(self, chunks: Iterable[Callable[[Any], list[tuple[Any, Any]]]], stages: Sequence[Any]) -> None:
        """Double-buffered host -> device transfer through the (pinned) `stages` (module docstring).

        Each chunk is `fill(stage) -> [(dst, src), ...]`: host work that writes the chunk into a staging buffer
        (a file read, a copy from pageable memory) and returns the copies to issue from it. Chunk i uses
        `stages[i % len(stages)]`. Finished when this returns."""
        if self._cuda is None:
            for fill in chunks:
                self._count(fill(stages[0]))
                self.staged_chunks += 1
            return
        with self._staging_lock:  # its own stream: a long read here never holds up another model's restore
            if self._staging is None:
                self._staging = self._cuda.Stream(self.device)
            side, current = self._staging, self._cuda.current_stream(self.device)
            side.wait_stream(current)  # the destination was allocated / last used on the current stream
            pending: list[Any] = [None] * len(stages)
            try:
                for i, fill in enumerate(chunks):
                    k = i % len(stages)
                    if pending[k] is not None:  # the copy that last read this buffer must be done
                        pending[k].synchronize()
                        pending[k] = None
                    pairs = fill(stages[k])  # host work, overlapping the copy of the previous chunk
                    with self._cuda.stream(side):
                        for dst, src in pairs:
                            dst.copy_(src, non_blocking=True)
                    event = self._cuda.Event()
                    event.record(side)
                    pending[k] = event
                    self.staged_chunks += 1
                    self._count(pairs, copy=False)
            finally:
                current.wait_stream(side)
                side.synchronize()

    def _count(self, pairs: list[tuple[Any, Any]], copy: bool = True) -> None:
        for dst, src in pairs:
            if copy:
                dst.copy_(src)
            self.copies += 1
            self.bytes_copied += int(src.numel()) * int(src.element_size())
