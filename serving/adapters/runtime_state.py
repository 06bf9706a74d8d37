"""What a model needs to run beyond its weights, kept across offload/restore: onnxruntime sessions and
TensorRT engines. (Torch modules, processors and tokenizers need nothing here: `Parking` moves only the
tensors' storage and leaves every object where it is, serving/adapters/parking.py.)

onnxruntime (`OrtSessionKeeper`). onnxruntime cannot move a session between devices nor release the
device memory of a live session (its initializers are copied into the execution provider's arena when
the session is built). So:
- on the CPU the session itself is kept across offload/restore (its weights are host memory already):
  a restore rebuilds nothing;
- on CUDA the session is the only thing dropped at offload (that frees its VRAM); everything else the
  model needs is kept in host RAM: the model bytes (no file read at restore), the session options and
  the provider list with their options, and, prepared once at the first offload, the graph after
  onnxruntime's basic optimizations (`SessionOptions.optimized_model_filepath`, built on the CPU EP at
  ORT_ENABLE_BASIC, which the docs define as EP-independent, so no VRAM is used to prepare it). A restore
  builds the CUDA session from those optimized bytes: constant folding and redundant-node elimination are
  not redone; the EP-specific (extended/layout) passes and the initializer upload are. The caller keeps
  its own objects (ultralytics' backend, names, metadata, IO-binding shapes) and rebinds outputs.
  `stats` counts sessions built, dropped and graph optimizations, so tests see that N swap cycles
  optimize once; the keeper holds bytes, never a path (tests delete the file before restoring).

TensorRT (`TrtEngineKeeper`, over ultralytics' TensorRTBackend attributes: `model` the ICudaEngine,
`context`, `bindings`, `graph`). The deserialized engine is kept; the device buffers live only while
resident:
- offload drops the CUDA graph, the binding tensors (inputs/outputs) and the execution context (its
  activation memory); then the engine's weights: with an engine built for weight streaming
  (`streamable_weights_size > 0`) the budget goes to 0 and TensorRT keeps the weights in host memory, the
  engine object stays (mode "weight-streaming"); an engine without it cannot give its weights back, so
  it is serialized once into host RAM and released (mode "host-copy");
- restore sets the budget back to every streamable byte (weight-streaming: no deserialization, no file
  read) or deserializes from the host copy (host-copy: no file read), creates the context, sets the
  dynamic input shapes, allocates the bindings with the shapes recorded at offload, points the context
  at them, and re-captures the CUDA graph when there was one. The context is re-created rather than
  kept: it is cheap next to deserialization, and keeping it would keep its activation memory.
`stats` counts deserializations, contexts created and budget changes.

Both are blocking, called from the adapter's worker thread; not thread-safe on their own (the adapter
serializes offload/restore with inference).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any


@dataclass
class KeeperStats:
    """Counters proving what a restore did (and did not) redo."""

    sessions_built: int = 0  # ORT sessions / TRT contexts created by the keeper
    sessions_dropped: int = 0
    graph_optimizations: int = 0  # ORT: optimization passes whose result is kept
    deserializations: int = 0  # TRT: engines deserialized by the keeper (0 in weight-streaming mode)
    budget_changes: int = 0  # TRT: weight-streaming budget set


class OrtSessionKeeper:
    """An onnxruntime session across offload/restore (module docstring).

    `ort` is the onnxruntime module (a seam: tests pass a fake); `model_bytes` the .onnx bytes kept in RAM;
    `providers` the [(name, options), ...] of the session built at load; `drop_on_offload` True on CUDA."""

    def __init__(self, session: Any, model_bytes: bytes, providers: list[Any], *, drop_on_offload: bool,
                 session_options: Any = None, ort: Any = None) -> None:
        if ort is None:  # pragma: no cover - the real module; tests inject a fake
            import onnxruntime as ort
        self.ort, self.session, self.model_bytes, self.providers = ort, session, model_bytes, list(providers)
        self.drop_on_offload, self.session_options = drop_on_offload, session_options
        self.optimized: bytes | None = None
        self.stats = KeeperStats()

    @property
    def mode(self) -> str:
        return "rebuild-session-from-ram" if self.drop_on_offload else "keep-session"

    def offload(self) -> None:
        """CPU: nothing (the session is kept). CUDA: optimize once, then drop the session (frees its VRAM)."""
        if not self.drop_on_offload or self.session is None:
            return
        if self.optimized is None:
            self.optimized = self._optimize()
        self.session = None
        self.stats.sessions_dropped += 1

    def restore(self) -> Any:
        """The session to run with: the kept one, or one built from the optimized bytes in RAM."""
        if self.session is None:
            self.session = self.ort.InferenceSession(self.optimized or self.model_bytes, self._options(),
                                                     providers=self.providers)
            self.stats.sessions_built += 1
        return self.session

    def _options(self) -> Any:
        """Fresh options each build (onnxruntime binds an options object to its session), from the user's."""
        opts = self.ort.SessionOptions()
        user = self.session_options
        for attr in ("intra_op_num_threads", "inter_op_num_threads", "execution_mode", "enable_mem_pattern",
                     "enable_cpu_mem_arena", "log_severity_level"):
            if user is not None and hasattr(user, attr):
                setattr(opts, attr, getattr(user, attr))
        opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return opts

    def _optimize(self) -> bytes:
        """The graph after the basic (EP-independent) passes, built on the CPU EP: no device memory."""
        fd, path = tempfile.mkstemp(suffix=".onnx", prefix="zoo-ort-opt-")
        os.close(fd)
        try:
            opts = self.ort.SessionOptions()
            opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            opts.optimized_model_filepath = path
            self.ort.InferenceSession(self.model_bytes, opts, providers=["CPUExecutionProvider"])
            with open(path, "rb") as f:
                data = f.read()
        finally:
            os.unlink(path)
        self.stats.graph_optimizations += 1
        return data


class TrtEngineKeeper:
    """A deserialized TensorRT engine across offload/restore (module docstring).

    `backend` has ultralytics' TensorRTBackend attributes (`model`, `context`, `bindings`, `graph`,
    `dynamic`, `is_trt10`, `device`); `runtime` deserializes (kept for the host-copy mode); `alloc(shape,
    dtype)` makes a device tensor for a binding, `capture(backend)` re-captures the CUDA graph and
    `on_device()` makes the backend's GPU current (TensorRT binds engines and contexts to it) - seams: tests
    pass fakes; the defaults are torch on the backend's device)."""

    def __init__(self, backend: Any, runtime: Any, *, alloc: Callable[[Any, Any], Any] | None = None,
                 capture: Callable[[Any], Any] | None = None,
                 on_device: Callable[[], AbstractContextManager[Any]] | None = None) -> None:
        self.backend, self.runtime = backend, runtime
        self.alloc = alloc or (lambda shape, dtype: _torch_binding(backend.device, shape, dtype))
        self.capture = capture or _capture_graph
        self.on_device = on_device or (lambda: _cuda_device(backend.device))
        engine = backend.model
        self.streaming = int(getattr(engine, "streamable_weights_size", 0) or 0) > 0
        self.mode = "weight-streaming" if self.streaming else "host-copy"
        self.host_copy: bytes | None = None
        self.shapes: dict[str, tuple[Any, Any]] = {}  # binding name -> (shape, dtype) while offloaded
        self.had_graph = False
        self.stats = KeeperStats()

    @property
    def resident(self) -> bool:
        return self.backend.context is not None

    def offload(self) -> None:
        be = self.backend
        if not self.resident:
            return
        self.had_graph = be.graph is not None
        self.shapes = {name: (tuple(b.shape), b.dtype) for name, b in be.bindings.items()}
        be.graph = None
        be.bindings = type(be.bindings)((name, b._replace(data=None)) for name, b in be.bindings.items())
        be.context = None
        self.stats.sessions_dropped += 1
        if self.streaming:
            be.model.weight_streaming_budget_v2 = 0
            self.stats.budget_changes += 1
        else:
            if self.host_copy is None:
                self.host_copy = bytes(be.model.serialize())
            be.model = None

    def restore(self) -> None:
        be = self.backend
        if self.resident:
            return
        with self.on_device():
            if self.streaming:
                be.model.weight_streaming_budget_v2 = int(be.model.streamable_weights_size)
                self.stats.budget_changes += 1
            else:
                assert self.host_copy is not None, "restore before offload"
                be.model = self.runtime.deserialize_cuda_engine(self.host_copy)
                self.stats.deserializations += 1
            engine = be.model
            be.context = engine.create_execution_context()
            self.stats.sessions_built += 1
            bindings = []
            for name, b in be.bindings.items():
                shape, dtype = self.shapes[name]
                if be.dynamic and be.is_trt10 and _is_input(engine, name):
                    be.context.set_input_shape(name, shape)
                bindings.append((name, b._replace(data=self.alloc(shape, dtype), shape=shape)))
            be.bindings = type(be.bindings)(bindings)
            if be.is_trt10:
                for name, b in be.bindings.items():
                    be.context.set_tensor_address(name, b.data.data_ptr())
            be.graph = self.capture(be) if self.had_graph else None


def _is_input(engine: Any, name: str) -> bool:
    mode = engine.get_tensor_mode(name)
    return getattr(mode, "name", str(mode)).upper().endswith("INPUT")


def _cuda_device(device: Any) -> AbstractContextManager[Any]:  # pragma: no cover - TensorRT needs a GPU
    import torch

    return torch.cuda.device(device)


def _torch_binding(device: Any, shape: Any, dtype: Any) -> Any:  # pragma: no cover - TensorRT needs a GPU
    import numpy as np
    import torch

    return torch.from_numpy(np.empty(shape, dtype=dtype)).to(device)


def _capture_graph(be: Any) -> Any:  # pragma: no cover - TensorRT needs a GPU
    """ultralytics' capture: one warm-up enqueue (TensorRT allocates on its first run), then the graph."""
    import torch

    stream, graph = torch.cuda.Stream(be.device), torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        ok = be.context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        with torch.cuda.graph(graph, stream=stream):
            ok &= be.context.execute_async_v3(stream.cuda_stream)
    return graph if ok else None
