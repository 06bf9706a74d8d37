"""`causal_lm`: chat LLM through transformers (AutoModelForCausalLM + AutoTokenizer with its chat
template); Nemotron in the zoo. Production serves the GGUF through llama.cpp (seed 003); this adapter
is the transformers path the project runs everywhere, fixtures included.

predict(items, max_new_tokens=options.max_new_tokens (256), temperature=0.0, top_p=1.0, seed=None):
    items: `Conversation`s, each a list of {"role": system|user|assistant|tool, "content": str}, or
           `PromptText`s (a raw prompt, tokenized as it is: llama.cpp's /completion).
    returns per conversation: {"text", "prompt_tokens", "completion_tokens", "finish_reason": stop|length}.
    temperature 0 (or below MIN_SAMPLING_TEMPERATURE) = greedy; above samples (seeded when `seed` is given).
stream(messages, **same options): generator of text pieces as they are decoded (TextIteratorStreamer,
    generation in a worker thread); its return value (StopIteration.value, or `yield from`) is the same
    dict without "text". Errors of the generation thread are re-raised in the consumer. Closing the
    generator (the client dropped the SSE stream) stops generation at the next token, so the lease is
    released at once instead of after max_new_tokens.
Conversations are generated one after the other (no padding across requests: Mamba layers of
Nemotron-H would see the pad tokens).
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Mapping, Sequence
from typing import Any

from serving.adapters.base import Conversation, PromptText
from serving.adapters.hf_common import SAFE_LOAD, SAFE_MODEL_LOAD, hf_folder, model_dtype
from serving.adapters.torch_base import TorchModuleAdapter
from serving.errors import BadRequest

ROLES = frozenset({"system", "user", "assistant", "tool"})
DEFAULT_MAX_NEW_TOKENS = 256
MAX_NEW_TOKENS_LIMIT = 8192
STREAM_TIMEOUT_S = 600.0
#: temperatures below this decode greedily (logits / 1e-308 are infinite: sampling would fail)
MIN_SAMPLING_TEMPERATURE = 1e-3


def check_messages(messages: Any) -> list[dict[str, str]]:
    """A conversation as a list of {"role", "content"} with known roles and string content (400 otherwise)."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise BadRequest("messages must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise BadRequest(f"messages[{i}] must be {{role: {'|'.join(sorted(ROLES))}, content: str}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _stopping(event: threading.Event) -> Any:
    """A transformers stopping criterion that ends generation once `event` is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _OnEvent(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_OnEvent()])


class CausalLMAdapter(TorchModuleAdapter):
    """A chat model; one tokenizer (with chat template) in `self.processor`."""

    family = "causal_lm"

    def _load_module(self, device: str) -> Any:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = hf_folder(self.ctx)
        self.format = "hf"
        self.processor = AutoTokenizer.from_pretrained(folder, **SAFE_LOAD)
        if not getattr(self.processor, "chat_template", None):
            raise BadRequest(f"{self.ctx.name}: the tokenizer has no chat template")
        return AutoModelForCausalLM.from_pretrained(folder, dtype=model_dtype(self.ctx), **SAFE_MODEL_LOAD,
                                   device_map=self.direct_to(device))

    @property
    def tokenizer(self) -> Any:
        return self.processor

    def warmup(self) -> None:
        self.predict([[{"role": "user", "content": "hello"}]], max_new_tokens=2)

    # --- generation plumbing -----------------------------------------------------------------
    def context_window(self) -> int:
        opt = (self.ctx.spec.options or {}).get("context_window")
        return int(opt or getattr(self.model.config, "max_position_embeddings", 4096))

    def eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = ids if isinstance(ids, list) else [ids]
        out = {int(i) for i in ids if i is not None}
        if self.tokenizer.eos_token_id is not None:
            out.add(int(self.tokenizer.eos_token_id))
        return out

    def encode(self, messages: Any) -> Any:
        """Prompt token ids (1, n) on the device: a `PromptText` as it is, a conversation through the chat
        template with the generation prompt."""
        if isinstance(messages, PromptText):
            if not messages.text:
                raise BadRequest("the prompt is empty")
            return self.tokenizer(messages.text, return_tensors="pt")["input_ids"].to(self.torch_device)
        enc = self.tokenizer.apply_chat_template(
            check_messages(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return enc["input_ids"].to(self.torch_device)

    def generate_kwargs(self, prompt_len: int, options: Mapping[str, Any]) -> dict[str, Any]:
        opts = {**(self.ctx.spec.options or {}), **options}
        if opts.get("grammar") or opts.get("json_schema"):
            raise BadRequest("constrained decoding (grammar / json_schema) needs the gguf (llama.cpp) backend; "
                             "this model runs on transformers", details={"backend": "transformers"})
        raw = opts.get("max_new_tokens")
        max_new = int(DEFAULT_MAX_NEW_TOKENS if raw is None else raw)
        if not 1 <= max_new <= MAX_NEW_TOKENS_LIMIT:
            raise BadRequest(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS_LIMIT}")
        if prompt_len + max_new > self.context_window():
            raise BadRequest(f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new}) exceeds the context window "
                             f"({self.context_window()})")
        temperature = float(opts.get("temperature") or 0.0)
        top_p = float(opts.get("top_p", 1.0) if opts.get("top_p") is not None else 1.0)
        if not (0 <= temperature < float("inf")) or not 0 < top_p <= 1:
            raise BadRequest("temperature must be >= 0 and top_p in (0, 1]")
        if temperature < MIN_SAMPLING_TEMPERATURE:  # the limit T -> 0 is greedy; a tiny T overflows softmax
            temperature = 0.0
        kw: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": self.tokenizer.pad_token_id}
        if temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def _seed(self, options: Mapping[str, Any]) -> None:
        if options.get("seed") is not None:
            import torch

            torch.manual_seed(int(options["seed"]))

    def _info(self, prompt_len: int, new_ids: list[int], max_new: int) -> dict[str, Any]:
        stopped = bool(new_ids) and new_ids[-1] in self.eos_ids()
        return {
            "prompt_tokens": prompt_len,
            "completion_tokens": len(new_ids),
            "finish_reason": "stop" if stopped or len(new_ids) < max_new else "length",
        }

    # --- API -----------------------------------------------------------------------------------
    def predict(self, items: Sequence[Conversation], **options: Any) -> list[dict[str, Any]]:
        import torch

        out = []
        for messages in items:
            ids = self.encode(messages)
            kw = self.generate_kwargs(ids.shape[1], options)
            self._seed(options)
            with torch.inference_mode():
                seq = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
            new_ids = seq[0, ids.shape[1]:].tolist()
            info = self._info(ids.shape[1], new_ids, kw["max_new_tokens"])
            out.append({"text": self.tokenizer.decode(new_ids, skip_special_tokens=True), **info})
        return out

    def stream(self, messages: Any, **options: Any) -> Generator[str, None, dict[str, Any]]:
        import torch
        from transformers import TextIteratorStreamer

        ids = self.encode(messages)
        kw = self.generate_kwargs(ids.shape[1], options)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                        timeout=STREAM_TIMEOUT_S)
        result: dict[str, Any] = {}
        stop = threading.Event()  # set when the consumer closes the stream (client gone): generation stops
        kw["stopping_criteria"] = _stopping(stop)

        def run() -> None:
            try:
                self._seed(options)
                with torch.inference_mode():
                    result["seq"] = self.model.generate(
                        input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer, **kw
                    )
            except BaseException as e:  # handed to the consumer below
                result["error"] = e
                streamer.end()

        worker = threading.Thread(target=run, name=f"{self.ctx.name}-generate", daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            stop.set()  # after the last token this is a no-op; on close() it ends generate() at the next token
            worker.join()
        if "error" in result:
            raise result["error"]
        new_ids = result["seq"][0, ids.shape[1]:].tolist()
        return self._info(ids.shape[1], new_ids, kw["max_new_tokens"])

    # --- text API shared with the gguf family (llama.cpp server routes) -------------------------
    supports_grammar = False

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def detokenize(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    def token_piece(self, token_id: int) -> str:
        return self.detokenize([token_id])

    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def metadata(self) -> dict[str, Any]:
        meta = {**super().metadata(), "chat_template": True}
        if self.model is not None:
            meta["context_window"] = self.context_window()
            meta["architecture"] = type(self.model).__name__
        return meta
