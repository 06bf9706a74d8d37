"""Offload and restore of a torch module's weights as one flat block (the warm tier's mechanism).

`Parking(module_tensors, device)` tracks the tensors (parameters and buffers, each once) of one module:
- `offload()`: takes ONE host buffer from the device's `HostPool` (pinned on CUDA, reused: no pinning per
  offload), copies every tensor into it at its aligned offset (one large copy when the tensors are already
  views of one device block, as after a direct load or a restore), and re-points each tensor's `.data` at
  its slice of the host buffer, which frees the device memory;
- `restore()`: allocates ONE device block, copies the host buffer into it in one large copy on the copy
  engine's side stream, re-points every tensor at its slice of the block, and gives the host buffer back to
  the pool. When the pool could not pin that buffer (a locked-memory limit), the copy goes through two
  pinned staging buffers instead, double-buffered (`CopyEngine.staged`: the memcpy of chunk i+1 into one
  overlaps the H2D copy of chunk i from the other).
The module object, its hooks, its processor and any other state of the adapter are untouched: a restore
runs no constructor and reads no file. Tensors keep their Parameter identity (`.data` is swapped), so
tied weights stay tied. The same path runs on every device: on the CPU both are real copies (which is what
`benchmarks/swap.py` measures against a plain memcpy).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from serving.adapters.weights import ALIGN, STAGING_BYTES


def module_tensors(module: Any) -> list[Any]:
    """Parameters and buffers of a module, each tensor once (tied weights appear once)."""
    seen: set[int] = set()
    out = []
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


class Parking:
    """One module's weights moving between one device block and one host buffer (module docstring)."""

    def __init__(self, tensors: Iterable[Any], device: Any, *, block: Any = None,
                 staging_bytes: int = STAGING_BYTES) -> None:
        self.tensors = list(tensors)
        self.staging_bytes = staging_bytes
        self.device = device
        self.block = None  # the device block the tensors are views of, when they are (direct load, restore)
        self.host: Any = None  # the pool buffer while parked
        if block is not None and (offsets := _offsets_in(block, self.tensors)) is not None:
            self.offsets, self.total, self.block = offsets, int(block.numel()), block
            return
        self.offsets = []
        pos = 0
        for t in self.tensors:
            pos = -(-pos // ALIGN) * ALIGN
            self.offsets.append(pos)
            pos += _nbytes(t)
        self.total = pos

    @property
    def parked(self) -> bool:
        return self.host is not None

    def _is_block_layout(self) -> bool:
        """True when every tensor is still the view of `block` at its offset (nobody re-pointed one)."""
        if self.block is None:
            return False
        base = self.block.data_ptr()
        return all(t.data_ptr() == base + off and _dense(t)
                   for t, off in zip(self.tensors, self.offsets, strict=True) if _nbytes(t))

    def compact(self) -> None:
        """Copy the tensors into one block on the device and re-point them (once, at load, on host devices):
        tensors that transformers leaves as views of the mmap'ed file are not aligned, and CPU kernels pick
        code paths by alignment, so without this a model's outputs would differ in the last bit after its
        first round trip through the warm tier. A no-op when already one block or parked."""
        if self.block is not None or self.parked:
            return
        import torch

        block = torch.empty(max(self.total, 1), dtype=torch.uint8, device=self.device.torch_device)
        pairs = [(_slice(block, off, t), t.data) for t, off in zip(self.tensors, self.offsets, strict=True)
                 if _nbytes(t)]
        self.device.copy_engine.copy(pairs)
        for t, off in zip(self.tensors, self.offsets, strict=True):
            t.data = _slice(block, off, t)
        self.block = block

    def offload(self) -> None:
        """Device -> one pooled host buffer; the device memory is released (module docstring)."""
        if self.parked:
            return
        host = self.device.host_pool.acquire(max(self.total, 1))
        try:
            if self._is_block_layout():
                pairs = [(host[:self.total], self.block[:self.total])]
            else:
                pairs = [(_slice(host, off, t), t.data) for t, off in zip(self.tensors, self.offsets, strict=True)
                         if _nbytes(t)]
            self.device.copy_engine.copy(pairs)
        except BaseException:
            self.device.host_pool.release(host)
            raise
        for t, off in zip(self.tensors, self.offsets, strict=True):
            t.data = _slice(host, off, t)
        self.host, self.block = host, None

    def restore(self) -> None:
        """The host buffer -> one new device block; the host buffer goes back to the pool."""
        if not self.parked:
            return
        import torch

        block = torch.empty(max(self.total, 1), dtype=torch.uint8, device=self.device.torch_device)
        engine, pool = self.device.copy_engine, self.device.host_pool
        if engine.async_copies and not pool.is_pinned(self.host):  # pinning was refused: stage it
            stages = [pool.acquire(self.staging_bytes), pool.acquire(self.staging_bytes)]
            try:
                engine.staged(_memcpy_chunks(self.host, block, self.total, self.staging_bytes), stages)
            finally:
                for stage in stages:
                    pool.release(stage)
        else:  # pinned (or host memory): one large asynchronous copy on the side stream
            engine.copy([(block[:self.total], self.host[:self.total])])
        for t, off in zip(self.tensors, self.offsets, strict=True):
            t.data = _slice(block, off, t)
        host, self.host, self.block = self.host, None, block
        self.device.host_pool.release(host)

    def drop(self) -> None:
        """Forget the weights (unload): the host buffer, if any, goes back to the pool."""
        if self.host is not None:
            host, self.host = self.host, None
            self.device.host_pool.release(host)
        self.block = None
        self.tensors = []


def _memcpy_chunks(host: Any, block: Any, total: int, chunk: int) -> Any:
    """One `fill(stage)` per chunk: pageable host bytes -> the pinned stage, then stage -> the device block."""
    for start in range(0, total, chunk):
        n = min(chunk, total - start)

        def fill(stage: Any, start: int = start, n: int = n) -> list[tuple[Any, Any]]:
            stage[:n].copy_(host[start:start + n])
            return [(block[start:start + n], stage[:n])]

        yield fill


def _offsets_in(block: Any, tensors: list[Any]) -> list[int] | None:
    """Each tensor's byte offset inside `block` when every one is a contiguous view of it, else None."""
    base, size = block.data_ptr(), int(block.numel()) * int(block.element_size())
    out = []
    for t in tensors:
        if not _nbytes(t):
            out.append(0)
            continue
        off = t.data_ptr() - base
        if not _dense(t) or t.device != block.device or off < 0 or off + _nbytes(t) > size \
                or off % int(t.element_size()):
            return None
        out.append(off)
    return out


def _nbytes(t: Any) -> int:
    return int(t.numel()) * int(t.element_size())


def _dense(t: Any) -> bool:
    """True when the tensor covers exactly numel elements of memory in some dimension order (contiguous,
    channels_last, ...): its bytes can be copied as they are and viewed with the same strides."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride(), strict=True), key=lambda p: p[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def _slice(buf: Any, off: int, like: Any) -> Any:
    """A view of `buf` at `off` with the dtype, shape and (when dense) strides of `like`, so that kernels
    see the same memory format after a round trip (channels_last convolutions stay channels_last)."""
    flat = buf[off:off + _nbytes(like)].view(like.dtype)
    if _dense(like):
        return flat.as_strided(tuple(like.shape), tuple(like.stride()))
    return flat.view(like.shape)
