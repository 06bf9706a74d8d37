"""Request models of llama.cpp's server API (serving/services/llama_api.py). Unknown fields do not fail a
request (llama.cpp takes dozens of sampling knobs: top_k, min_p, repeat_penalty, cache_prompt, n_probs, ...;
the ones not listed here do not change our sampling; upstream mode forwards them unchanged)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serving.adapters.causal_lm import MAX_NEW_TOKENS_LIMIT


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


class NvExt(_Req):
    """NVIDIA NIM's extension object; `guided_json` is a JSON Schema the output must follow."""

    guided_json: dict[str, Any] | None = None


class ResponseFormat(_Req):
    type: str = "text"
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    json_schema: dict[str, Any] | None = None


class _Passing(BaseModel):
    """Unknown fields are kept (not used locally): upstream mode forwards them to llama.cpp as they came."""

    model_config = ConfigDict(extra="allow")


class CompletionRequest(_Passing):
    """POST /completion (llama.cpp)."""

    prompt: str | list[int] = Field(description="Prompt text (used as it is, e.g. ChatML) or token ids.")
    n_predict: int | None = Field(None, ge=-1, le=MAX_NEW_TOKENS_LIMIT, description="-1 = until the context is full.")
    max_tokens: int | None = Field(None, ge=-1, le=MAX_NEW_TOKENS_LIMIT, description="Alias of n_predict.")
    temperature: float = Field(0.8, ge=0.0, le=5.0, description="llama.cpp's default is 0.8; 0 = greedy.")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-1, le=2**32 - 1)
    stream: bool = False
    grammar: str | None = Field(None, max_length=65536, description="GBNF grammar (gguf backend).")
    json_schema: dict[str, Any] | None = Field(None, description="JSON Schema of the output (gguf backend).")
    nvext: NvExt | None = None
    response_format: ResponseFormat | None = None

    def schema_of(self) -> dict[str, Any] | None:
        """The output schema from json_schema, nvext.guided_json or response_format (first given)."""
        if self.json_schema:
            return self.json_schema
        if self.nvext and self.nvext.guided_json:
            return self.nvext.guided_json
        rf = self.response_format
        if rf is not None and rf.type in ("json_object", "json_schema"):
            schema = rf.schema_ or (rf.json_schema or {}).get("schema") or rf.json_schema
            return schema or {"type": "object"}
        return None


class LegacyCompletionRequest(_Passing):
    """POST /v1/completions (OpenAI legacy text completion)."""

    model: str | None = None
    prompt: str | list[str] | list[int] = Field(description="One prompt (a one-element list is accepted).")
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)

    def as_completion(self) -> CompletionRequest:
        prompt: Any = self.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                from serving.errors import BadRequest

                raise BadRequest("one prompt per request", details={"prompts": len(prompt)})
            prompt = prompt[0]
        return CompletionRequest(prompt=prompt, max_tokens=self.max_tokens,
                                 temperature=1.0 if self.temperature is None else self.temperature,
                                 top_p=self.top_p, stop=self.stop, seed=self.seed, stream=self.stream)


class TokenizeRequest(_Req):
    content: str = Field(max_length=1_000_000)
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(_Req):
    tokens: list[int] = Field(max_length=1_000_000)


class Slot(BaseModel):
    """One entry of GET /slots."""

    model_config = ConfigDict(extra="allow")
    id: int
    id_task: int
    n_ctx: int
    is_processing: bool
    state: int = Field(description="0 idle, 1 processing (older llama.cpp servers' field).")
