"""What a model keeps beyond its weights across offload/restore (serving/adapters/runtime_state.py), on CPU:
- the onnxruntime keeper through a fake `onnxruntime` (counters: one graph optimization for N swap cycles, the
  CUDA-side session built from the optimized bytes, never from a file) and through the real onnxruntime on
  the CPU EP with the CUDA policy forced (the optimized graph really runs and gives the same outputs);
- the TensorRT keeper through a fake engine whose weights, context memory and bindings are allocations on a
  `FakeDevice`: offload frees them all, restore reuses the deserialized engine (weight streaming: zero
  deserializations) or deserializes from the host copy (never the file);
- adapters whose files are moved away while WARM restore and predict the same (nothing is re-read), with
  their processor, module and session objects unchanged."""

from __future__ import annotations

import contextlib
import shutil
from collections import OrderedDict, namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from serving.adapters.runtime_state import OrtSessionKeeper, TrtEngineKeeper
from serving.vram.devices import FakeDevice


# ---------------------------------------------------------------------------------------- onnxruntime
class FakeOrt:
    """The parts of the onnxruntime module the keeper uses; every session built is recorded."""

    class GraphOptimizationLevel:
        ORT_ENABLE_BASIC, ORT_ENABLE_ALL = "basic", "all"

    class SessionOptions:
        def __init__(self) -> None:
            self.graph_optimization_level = None
            self.optimized_model_filepath = ""
            self.intra_op_num_threads = 0

    def __init__(self) -> None:
        self.built: list[dict] = []
        ort = self

        class InferenceSession:
            def __init__(self, model, opts, providers=None) -> None:
                assert isinstance(model, bytes), "the keeper hands over bytes, never a path"
                ort.built.append({"model": model, "level": opts.graph_optimization_level, "providers": providers,
                                  "threads": opts.intra_op_num_threads})
                if opts.optimized_model_filepath:
                    Path(opts.optimized_model_filepath).write_bytes(b"OPT:" + model)

        self.InferenceSession = InferenceSession


CUDA_PROVIDERS = [("CUDAExecutionProvider", {"device_id": "0"}), ("CPUExecutionProvider", {})]


def test_on_cuda_n_swap_cycles_optimize_once_and_build_from_the_optimized_bytes():
    ort = FakeOrt()
    user = FakeOrt.SessionOptions()
    user.intra_op_num_threads = 3
    first = object()
    k = OrtSessionKeeper(first, b"MODEL", CUDA_PROVIDERS, drop_on_offload=True, session_options=user, ort=ort)
    sessions = []
    for _ in range(3):
        k.offload()
        assert k.session is None  # the only thing dropped: its VRAM goes
        sessions.append(k.restore())
    assert k.stats.graph_optimizations == 1 and k.stats.sessions_built == 3 and k.stats.sessions_dropped == 3
    assert k.mode == "rebuild-session-from-ram"
    optimize, *restores = ort.built
    assert optimize == {"model": b"MODEL", "level": "basic", "providers": ["CPUExecutionProvider"], "threads": 0}
    for r in restores:  # the CUDA session: from the optimized graph, the user's providers and options
        assert r == {"model": b"OPT:MODEL", "level": "all", "providers": CUDA_PROVIDERS, "threads": 3}
    assert len({id(s) for s in sessions}) == 3 and all(s is not first for s in sessions)


def test_on_the_cpu_the_session_itself_is_kept():
    ort = FakeOrt()
    first = object()
    k = OrtSessionKeeper(first, b"MODEL", [("CPUExecutionProvider", {})], drop_on_offload=False, ort=ort)
    for _ in range(3):
        k.offload()
        assert k.restore() is first
    assert ort.built == [] and k.stats.sessions_built == 0 and k.mode == "keep-session"


def test_the_real_onnxruntime_runs_the_optimized_graph_kept_in_ram(built_models):
    """The CUDA policy (drop, rebuild from the optimized bytes) forced on the CPU EP of the real onnxruntime:
    the rebuilt session gives the outputs of the original, and the .onnx file is gone by then."""
    import onnxruntime as ort

    zoo = built_models("threat_detector")
    path = Path(zoo.models_root) / zoo.models["threat_detector"].source["onnx"]
    blob = path.read_bytes()
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else (1 if i == 0 else 64) for i, d in enumerate(inp.shape)]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    ref = sess.run(None, {inp.name: x})
    k = OrtSessionKeeper(sess, blob, ["CPUExecutionProvider"], drop_on_offload=True)
    del sess
    for _ in range(2):
        k.offload()
        out = k.restore().run(None, {inp.name: x})
        assert all(np.allclose(a, b, atol=1e-4) for a, b in zip(ref, out, strict=True))
    assert k.optimized and k.optimized != blob and k.stats.graph_optimizations == 1 and k.stats.sessions_built == 2


# ---------------------------------------------------------------------------------------- TensorRT
Binding = namedtuple("Binding", ("name", "dtype", "shape", "data"))


class Mode:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeEngine:
    """An ICudaEngine whose device memory is accounted on a FakeDevice: weights (unless streamed out) and
    the activation memory of each live context."""

    def __init__(self, dev: FakeDevice, weights: int, *, streamable: bool) -> None:
        self.dev, self.weights = dev, weights
        self.streamable_weights_size = weights if streamable else 0
        self._budget = weights
        dev.allocate("engine.weights", weights)
        self.contexts = 0

    @property
    def weight_streaming_budget_v2(self) -> int:
        return self._budget

    @weight_streaming_budget_v2.setter
    def weight_streaming_budget_v2(self, n: int) -> None:
        assert self.dev.owned("engine.context") == 0, "the budget changes with no live context"
        self.dev.release("engine.weights")
        if n:
            self.dev.allocate("engine.weights", n)
        self._budget = n

    def create_execution_context(self) -> FakeContext:
        self.contexts += 1
        return FakeContext(self)

    def get_tensor_mode(self, name: str) -> Mode:
        return Mode("INPUT" if name == "images" else "OUTPUT")

    def serialize(self) -> bytes:
        return b"ENGINE-BYTES"

    def __del__(self) -> None:  # a destroyed engine frees its device weights
        if self._budget:
            self.dev.release("engine.weights", self._budget)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        engine.dev.allocate("engine.context", 1000)
        self.addresses: dict[str, int] = {}
        self.input_shapes: dict[str, tuple] = {}

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addresses[name] = ptr

    def set_input_shape(self, name: str, shape: tuple) -> None:
        self.input_shapes[name] = shape

    def __del__(self) -> None:
        self.engine.dev.release("engine.context", 1000)


class FakeRuntime:
    def __init__(self, dev: FakeDevice) -> None:
        self.dev, self.deserialized = dev, []

    def deserialize_cuda_engine(self, blob: bytes) -> FakeEngine:
        self.deserialized.append(blob)
        return FakeEngine(self.dev, 5000, streamable=False)


class FakeBackend:
    """ultralytics' TensorRTBackend attributes after its load_model."""

    def __init__(self, dev: FakeDevice, *, streamable: bool, dynamic: bool = False) -> None:
        self.device, self.is_trt10, self.dynamic = "cuda:0", True, dynamic
        self.model = FakeEngine(dev, 5000, streamable=streamable)
        self.context = self.model.create_execution_context()
        self.bindings = OrderedDict((n, Binding(n, np.float16, s, torch.zeros(s))) for n, s in
                                    (("images", (2, 3, 64, 64)), ("output0", (2, 84, 80))))
        self.graph = "captured"


def trt_keeper(dev: FakeDevice, be: FakeBackend) -> tuple[TrtEngineKeeper, list]:
    allocs: list[tuple] = []

    def alloc(shape, dtype):
        allocs.append((shape, dtype))
        return torch.zeros(shape)

    entered: list[str] = []

    @contextlib.contextmanager
    def on_device():
        entered.append(be.device)
        yield

    k = TrtEngineKeeper(be, FakeRuntime(dev), alloc=alloc, capture=lambda be: "recaptured", on_device=on_device)
    k.entered = entered
    return k, allocs


def test_a_weight_streaming_engine_is_kept_and_never_deserialized_again():
    dev = FakeDevice(1 << 20)
    be = FakeBackend(dev, streamable=True)
    engine = be.model
    k, allocs = trt_keeper(dev, be)
    assert k.mode == "weight-streaming" and dev.allocated_bytes() == 6000
    for _ in range(3):
        k.offload()
        assert dev.allocated_bytes() == 0  # weights streamed out, context and bindings gone
        assert be.context is None and be.graph is None and all(b.data is None for b in be.bindings.values())
        k.restore()
        assert dev.allocated_bytes() == 6000
    assert be.model is engine and k.runtime.deserialized == [] and k.stats.deserializations == 0
    assert k.stats.budget_changes == 6 and k.stats.sessions_built == 3 and engine.contexts == 4
    assert [s for s, _ in allocs[:2]] == [(2, 3, 64, 64), (2, 84, 80)] and allocs[0][1] is np.float16
    assert be.context.addresses == {n: b.data.data_ptr() for n, b in be.bindings.items()}
    assert be.graph == "recaptured" and k.entered == ["cuda:0"] * 3  # engine and context made on its GPU
    assert isinstance(be.bindings, OrderedDict)


def test_an_engine_without_weight_streaming_is_restored_from_its_host_copy_not_the_file():
    dev = FakeDevice(1 << 20)
    be = FakeBackend(dev, streamable=False, dynamic=True)
    k, _ = trt_keeper(dev, be)
    assert k.mode == "host-copy"
    for _ in range(2):
        k.offload()
        assert dev.allocated_bytes() == 0 and be.model is None and k.host_copy == b"ENGINE-BYTES"
        k.restore()
        assert dev.allocated_bytes() == 6000
    assert k.runtime.deserialized == [b"ENGINE-BYTES"] * 2 and k.stats.deserializations == 2
    assert be.context.input_shapes == {"images": (2, 3, 64, 64)}  # dynamic: the recorded input shape


def test_trt_offload_and_restore_are_idempotent():
    dev = FakeDevice(1 << 20)
    be = FakeBackend(dev, streamable=True)
    k, _ = trt_keeper(dev, be)
    k.restore()  # already resident: nothing
    assert k.stats.sessions_built == 0
    k.offload()
    k.offload()
    assert k.stats.budget_changes == 1


# ---------------------------------------------------------------------------------------- no file re-read
def moved_zoo(zoo, name: str, tmp_path: Path):
    """The model's files copied under tmp (the shared fixtures are never moved) and a zoo pointing there."""
    z = zoo.model_copy(deep=True)
    root = Path(zoo.models_root)
    for rel in z.models[name].source.values():
        top = Path(rel).parts[0]
        dst = tmp_path / top
        if not dst.exists():
            (shutil.copytree if (root / top).is_dir() else shutil.copy2)(root / top, dst)
    z.models_root = str(tmp_path)
    return z, sorted({tmp_path / Path(rel).parts[0] for rel in z.models[name].source.values()})


class CudaKindFakeDevice(FakeDevice):
    """A FakeDevice that the adapters treat as CUDA (its tensors are host memory): drives the CUDA policies."""

    kind = "cuda"


@pytest.mark.parametrize(("name", "fmt", "cuda"), [
    ("demographics_age", None, False),  # an image processor
    ("fashion_clip", None, False),  # a processor with a tokenizer (zero-shot prompts are tokenized per request)
    ("threat_detector", "onnx", False), ("threat_detector", "pt", False), ("threat_detector", "onnx", True),
])
def test_a_restore_reads_no_file_and_rebuilds_no_object(built_models, tmp_path, name, fmt, cuda):
    from PIL import Image

    from serving.adapters.registry import AdapterRegistry
    from serving.adapters.yolo import YoloAdapter

    zoo, files = moved_zoo(built_models(name), name, tmp_path / "models")
    reg = AdapterRegistry({"yolo": lambda ctx: YoloAdapter(ctx, backends_available={fmt})}) if fmt \
        else AdapterRegistry()
    a = reg.create(name, zoo.models[name], Path(zoo.models_root), (CudaKindFakeDevice if cuda else FakeDevice)(1 << 34))
    a.load()
    img = Image.new("RGB", (96, 96), (30, 60, 90))
    opts = {"confidence": 0.0} if fmt else {}
    ref = a.predict([img], **opts)
    kept = {k: getattr(a, k) for k in ("processor", "model", "yolo") if getattr(a, k, None) is not None}
    if fmt:
        kept["backend"] = a._backend()
        kept["session_or_module"] = a._backend().session if fmt == "onnx" else a._backend().model
    a.offload()
    for f in files:  # the files are gone: a restore that re-read or re-initialised anything would fail
        f.rename(f.with_name(f.name + ".moved"))
    a.restore()
    assert a.predict([img], **opts) == ref
    assert all(getattr(a, k) is v for k, v in kept.items() if k in ("processor", "model", "yolo"))
    if fmt:
        assert a._backend() is kept["backend"]
        now = a._backend().session if fmt == "onnx" else a._backend().model
        assert (now is kept["session_or_module"]) is not cuda  # CUDA: only the session was rebuilt
    if fmt == "onnx":
        a.offload()
        a.restore()
        assert a.predict([img], **opts) == ref
        r = a.metadata()["restore"]
        if cuda:  # two cycles: one graph optimization, two sessions built from the bytes kept in RAM
            assert r["mode"] == "rebuild-session-from-ram" and r["graph_optimizations"] == 1
            assert r["sessions_built"] == 2 and r["sessions_dropped"] == 2
        else:
            assert r["mode"] == "keep-session" and r["sessions_built"] == 0 and r["graph_optimizations"] == 0
    a.unload()
