"""`gguf`: a GGUF model run by llama.cpp through llama-cpp-python: seed 003's production Nemotron
(Nemotron-3-Nano-30B-A3B Q4_K_M) and the tiny fixture `zoo fixtures` writes (serving/fixtures/gguf.py).

Options (zoo.yaml `options`, the environment via serving/config.py): `n_gpu_layers` (GPU_LAYERS; -1 = all;
forced to 0 on a CPU device), `n_ctx` (CTX_SIZE; default 4096), `n_threads`, `n_batch`, `seed`. The file is
`source.gguf` (MODEL_PATH overrides it).

Same text API as `causal_lm` (the LLM service's routes use either):
    predict(items, max_new_tokens, temperature, top_p, seed, stop, grammar, json_schema)
        items: `Conversation`s (the GGUF's own chat template, llama-cpp-python's Jinja formatter) or
        `PromptText`s (raw prompts, llama.cpp's /completion); returns per item {"text", "prompt_tokens",
        "completion_tokens", "finish_reason": stop|length}.
    stream(item, **same options): a generator of text pieces returning the same dict without "text". The
        generation runs in its own thread (a llama.cpp context serves one sequence at a time: a lock);
        the consumer reads its pieces from a queue.
    tokenize / detokenize / token_piece / context_window / chat_template.
`grammar` (GBNF text) and `json_schema` (a JSON Schema object) are honoured with llama.cpp's grammar
sampler (`LlamaGrammar`); an invalid one is a 400.

Tiers: WARM = the model re-opened with no layer on the GPU (host RAM, the file mmapped), HOT = with
`n_gpu_layers`; on a CPU device both are the same open model. Memory: `param_bytes` is the file size (the
mmapped weights); `device_bytes` is what this process's GPU usage grew by while loading (NVML through the
device's `process_bytes`), which the manager records as the footprint (torch's allocator does not see
llama.cpp's buffers).

`llama_factory` is the seam: tests may pass a fake with llama_cpp.Llama's signature; by default the real
`llama_cpp.Llama` (a missing package is a load failure naming `pip install llama-cpp-python`).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, ClassVar

from serving.adapters.base import Adapter, Conversation, LoadContext, PromptText
from serving.adapters.causal_lm import DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS_LIMIT, check_messages
from serving.errors import BadRequest, ModelLoadFailed

DEFAULT_N_CTX = 4096
STREAM_TIMEOUT_S = 600.0
_END = object()


def llama_cpp_module() -> Any:
    try:
        import llama_cpp
    except ImportError as e:
        raise ModelLoadFailed("the gguf family needs llama-cpp-python: pip install llama-cpp-python "
                              f"(built from source with the machine's compiler): {e}") from e
    return llama_cpp


class GgufAdapter(Adapter):
    """One llama.cpp model (`self.llm`, a `llama_cpp.Llama`)."""

    family = "gguf"
    supports_grammar: ClassVar[bool] = True

    def __init__(self, ctx: LoadContext, llama_factory: Callable[..., Any] | None = None) -> None:
        super().__init__(ctx)
        self.format = "gguf"
        self.dtype = "gguf"
        self.llm: Any = None
        self._factory = llama_factory
        self._lock = threading.Lock()
        self._device_bytes = 0
        self.tier = "COLD"

    # ---------------------------------------------------------------- options and life cycle
    @property
    def options(self) -> dict[str, Any]:
        return dict(self.ctx.spec.options or {})

    def gpu_layers(self) -> int:
        if self.ctx.device.kind != "cuda":
            return 0
        return int(self.options.get("n_gpu_layers", -1))

    def n_ctx(self) -> int:
        return int(self.options.get("n_ctx") or DEFAULT_N_CTX)

    def _path(self) -> str:
        path = self.ctx.path("gguf")
        if path is None:
            raise ModelLoadFailed(f"{self.ctx.name}: no GGUF file at source.gguf "
                                  f"({self.ctx.spec.source.get('gguf')!r} under {self.ctx.models_root})")
        return str(path)

    def _open(self, gpu_layers: int) -> Any:
        factory = self._factory or llama_cpp_module().Llama
        kw: dict[str, Any] = {"model_path": self._path(), "n_gpu_layers": gpu_layers, "n_ctx": self.n_ctx(),
                              "verbose": False}
        for key in ("n_threads", "n_batch", "seed"):
            if self.options.get(key) is not None:
                kw[key] = int(self.options[key])
        try:
            return factory(**kw)
        except ValueError as e:  # llama-cpp-python: "Failed to load model from file"
            raise ModelLoadFailed(f"{self.ctx.name}: llama.cpp could not load {kw['model_path']}: {e}") from e

    def _process_bytes(self) -> int:
        probe = getattr(self.ctx.device, "process_bytes", None)
        return int(probe()) if probe is not None else 0

    def load(self) -> None:
        before = self._process_bytes()
        self.llm = self._open(self.gpu_layers())
        self._device_bytes = max(0, self._process_bytes() - before)
        self.tier = "HOT"

    def offload(self) -> None:
        if self.gpu_layers() != 0:
            self.llm = None  # free the GPU buffers before opening the host copy
            self.llm = self._open(0)
        self.tier = "WARM"

    def restore(self) -> None:
        if self.gpu_layers() != 0:
            self.llm = None
            self.llm = self._open(self.gpu_layers())
        self.tier = "HOT"

    def unload(self) -> None:
        llm, self.llm = self.llm, None
        close = getattr(llm, "close", None)
        if close is not None:
            close()
        self.tier = "COLD"

    def param_bytes(self) -> int:
        path = self.ctx.path("gguf")
        return path.stat().st_size if path is not None and path.exists() else 0

    def device_bytes(self) -> int:
        """GPU bytes this process gained while loading (0 on CPU or without NVML)."""
        return self._device_bytes

    def warmup(self) -> None:
        self.predict([PromptText("hello")], max_new_tokens=2)

    # ---------------------------------------------------------------- text API
    def context_window(self) -> int:
        return int(self.llm.n_ctx()) if self.llm is not None else self.n_ctx()

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids; 400 for an id outside the vocabulary (llama.cpp aborts the process on one)."""
        n_vocab = int(self.llm.n_vocab())
        bad = [i for i in ids if not 0 <= int(i) < n_vocab]
        if bad:
            raise BadRequest(f"token ids must be in 0..{n_vocab - 1}; got {bad[:5]}",
                             details={"n_vocab": n_vocab, "invalid": bad[:5]})
        return self.llm.detokenize(list(ids), special=True).decode("utf-8", errors="replace")

    def token_piece(self, token_id: int) -> str:
        return self.detokenize([token_id])

    def chat_template(self) -> str | None:
        meta = getattr(self.llm, "metadata", None) or {}
        return meta.get("tokenizer.chat_template")

    def _grammar(self, opts: Mapping[str, Any]) -> Any:
        """A checked `LlamaGrammar` from `grammar` (GBNF) or `json_schema`, or None. llama-cpp-python does not
        check a grammar before sampling with it, and an unparsable one crashes the process in llama.cpp's
        sampler: every grammar is parsed here first by llama.cpp's own parser (400 when it fails)."""
        grammar, schema = opts.get("grammar"), opts.get("json_schema")
        if not grammar and not schema:
            return None
        ll = llama_cpp_module()
        if not grammar:
            try:
                grammar = ll.llama_grammar.json_schema_to_gbnf(json.dumps(schema))
            except Exception as e:  # the converter asserts on schemas it does not know
                raise BadRequest(f"json_schema cannot be turned into a grammar: {e}") from e
        text = str(grammar)
        self._check_grammar(ll, text)
        return ll.LlamaGrammar.from_string(text, verbose=False)

    def _check_grammar(self, ll: Any, text: str) -> None:
        model = getattr(getattr(self.llm, "_model", None), "model", None)
        if model is None:  # not a real llama_cpp.Llama (a test double): nothing to check against
            return
        sampler = ll.llama_sampler_init_grammar(ll.llama_model_get_vocab(model), text.encode("utf-8"), b"root")
        if not sampler:
            raise BadRequest("invalid grammar: llama.cpp cannot parse it (GBNF with a `root` rule expected)")
        ll.llama_sampler_free(sampler)

    def _sampling(self, options: Mapping[str, Any]) -> dict[str, Any]:
        opts = {**self.options, **options}
        raw = opts.get("max_new_tokens")
        max_new = int(DEFAULT_MAX_NEW_TOKENS if raw is None else raw)
        if not 1 <= max_new <= MAX_NEW_TOKENS_LIMIT:
            raise BadRequest(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS_LIMIT}")
        temperature = float(opts.get("temperature") or 0.0)
        top_p = 1.0 if opts.get("top_p") is None else float(opts["top_p"])
        if temperature < 0 or not 0 < top_p <= 1:
            raise BadRequest("temperature must be >= 0 and top_p in (0, 1]")
        kw: dict[str, Any] = {"max_tokens": max_new, "temperature": temperature, "top_p": top_p,
                              "grammar": self._grammar(opts)}
        if opts.get("seed") is not None and "seed" in options:
            kw["seed"] = int(opts["seed"])
        if opts.get("stop"):
            kw["stop"] = list(opts["stop"])
        return kw

    def _prompt_tokens(self, item: Any) -> tuple[str | None, list[dict[str, str]] | None, int]:
        """(prompt, messages, prompt token count) of an item; 400 when it exceeds the context window."""
        if isinstance(item, PromptText):
            if not item.text:
                raise BadRequest("the prompt is empty")
            n = len(self.tokenize(item.text, add_special=True))
            return item.text, None, n
        messages = check_messages(item)
        return None, messages, 0

    def _check_room(self, n_prompt: int, max_new: int) -> None:
        if n_prompt + max_new > self.context_window():
            raise BadRequest(f"prompt ({n_prompt} tokens) + max_new_tokens ({max_new}) exceeds the context window "
                             f"({self.context_window()})")

    def _run(self, item: Any, kw: dict[str, Any], stream: bool) -> Any:
        prompt, messages, n_prompt = self._prompt_tokens(item)
        self._check_room(n_prompt, kw["max_tokens"])
        try:
            if prompt is not None:
                return self.llm.create_completion(prompt=prompt, stream=stream, **kw)
            return self.llm.create_chat_completion(messages=messages, stream=stream, **kw)
        except ValueError as e:  # llama-cpp-python: "Requested tokens (...) exceed context window"
            raise BadRequest(str(e)) from e

    @staticmethod
    def _text_of(choice: Mapping[str, Any]) -> str:
        if "text" in choice:
            return str(choice.get("text") or "")
        return str((choice.get("message") or choice.get("delta") or {}).get("content") or "")

    def predict(self, items: Sequence[Conversation | PromptText], **options: Any) -> list[dict[str, Any]]:
        out = []
        for item in items:
            kw = self._sampling(options)
            with self._lock:
                res = self._run(item, kw, stream=False)
            choice = res["choices"][0]
            usage = res.get("usage") or {}
            out.append({"text": self._text_of(choice), "prompt_tokens": int(usage.get("prompt_tokens", 0)),
                        "completion_tokens": int(usage.get("completion_tokens", 0)),
                        "finish_reason": choice.get("finish_reason") or "stop"})
        return out

    def stream(self, item: Conversation | PromptText, **options: Any) -> Generator[str, None, dict[str, Any]]:
        kw = self._sampling(options)
        prompt, _, n_prompt = self._prompt_tokens(item)
        self._check_room(n_prompt, kw["max_tokens"])
        pieces: queue.Queue[Any] = queue.Queue()
        cancel = threading.Event()
        info: dict[str, Any] = {"prompt_tokens": n_prompt, "completion_tokens": 0, "finish_reason": "stop"}

        def produce() -> None:
            try:
                with self._lock:
                    for chunk in self._run(item, kw, stream=True):
                        if cancel.is_set():  # the consumer went away: stop generating
                            break
                        choice = (chunk.get("choices") or [{}])[0]
                        if choice.get("finish_reason"):
                            info["finish_reason"] = choice["finish_reason"]
                        text = self._text_of(choice)
                        if text:
                            info["completion_tokens"] += 1
                            pieces.put(text)
            except BaseException as e:  # handed to the consumer
                pieces.put(e)
            finally:
                pieces.put(_END)

        worker = threading.Thread(target=produce, name=f"{self.ctx.name}-llama", daemon=True)
        worker.start()
        try:
            while True:
                got = pieces.get(timeout=STREAM_TIMEOUT_S)
                if got is _END:
                    break
                if isinstance(got, BaseException):
                    raise got
                yield got
        finally:
            cancel.set()
            worker.join()
        return info

    def metadata(self) -> dict[str, Any]:
        meta = {**super().metadata(), "backend": "llama.cpp", "n_gpu_layers": self.gpu_layers(), "n_ctx": self.n_ctx()}
        if self.llm is not None:
            meta["chat_template"] = self.chat_template() is not None
        return meta
