"""`python -m corea serve`: the cascade behind an OpenAI-compatible chat API.

    python -m corea serve --config cascade.json --port 8000
    # any OpenAI client: base_url="http://127.0.0.1:8000/v1"

The last user message is the question; it is asked in corea's protocol (its system prompt and worked
examples), so each tier states a confidence and the cascade decides as everywhere else. Each
response carries the standard `usage` (summed over the tiers called) and a `corea` field: which
tier answered, every tier's confidence and decision, the cost, and whether it was a fallback.

Failures: a tier whose call fails is retried with exponential backoff; after the last retry the
question is answered by the last tier that did answer, marked `fallback: true`. A tier that keeps
failing is cooled down (skipped) for a while. Requests are bounded in size and generation length.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Iterator, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from corea.cascade import Cascade, CascadeConfig, CascadeResult, TierSpec, TierStep
from corea.models import Generation, GenerationConfig, ModelError
from corea.protocol import MAX_QUESTION_CHARS
from corea.stopping import find_stop, stop_of

SERVED_MODEL = "corea-cascade"
MAX_BODY_BYTES = 256 * 1024
MAX_MESSAGES = 64


@dataclass
class ServePolicy:
    retries: int = 2  # further attempts after a failed call
    backoff_s: float = 0.5  # first wait; doubles each retry
    failures_to_cool: int = 3  # consecutive failed calls that put a tier in cool-down
    cooldown_s: float = 30.0
    max_new_tokens: int = 512  # the most a request may ask for


# ------------------------------------------------------------------------------ request and errors

MAX_CHOICES = 8
MAX_STOP_SEQUENCES = 4  # as OpenAI's API
MAX_SEED = 2**32 - 1  # llama.cpp's seeds are 32-bit


class TextPart(BaseModel):
    """A content part as OpenAI clients send it: only text can be a question here."""
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str = Field(max_length=MAX_QUESTION_CHARS * 4)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = Field(default=None, max_length=MAX_QUESTION_CHARS * 4)
    name: str | None = Field(default=None, max_length=256)  # a participant's name: no effect

    def text(self) -> str:
        if isinstance(self.content, list):  # text parts join as OpenAI joins them
            return "\n".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False  # the last chunk always carries usage; asking for it changes nothing


class ChatRequest(BaseModel):
    # Every field of OpenAI's chat API that is not below is refused by name (400), never dropped.
    model_config = ConfigDict(extra="forbid")
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str | None = Field(default=None, max_length=256)  # any name: the cascade answers
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    user: str | None = Field(default=None, max_length=256)  # an end-user id: no effect
    # Accepted only at the value that changes nothing, refused otherwise (corea cannot do them).
    logprobs: bool | None = None
    top_logprobs: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict | None = None
    response_format: dict | None = None
    tools: list | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None


UNSUPPORTED = {  # field: (the value that is accepted, why any other is refused)
    "logprobs": (False, "token log-probabilities of the cascade's answer are not returned"),
    "top_logprobs": (0, "token log-probabilities of the cascade's answer are not returned"),
    "frequency_penalty": (0, "the tiers decode without penalties"),
    "presence_penalty": (0, "the tiers decode without penalties"),
    "logit_bias": ({}, "the tiers are different models with different vocabularies"),
    "tools": ([], "tool calls are not supported"),
    "tool_choice": ("none", "tool calls are not supported"),
    "parallel_tool_calls": (False, "tool calls are not supported"),
    "store": (False, "nothing is stored"),
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ------------------------------------------------------------------------------------ tier health

@dataclass
class TierHealth:
    failures: int = 0
    cooled_until: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def available(self) -> bool:
        return time.monotonic() >= self.cooled_until

    def record(self, ok: bool, policy: ServePolicy) -> None:
        with self.lock:
            if ok:
                self.failures = 0
                return
            self.failures += 1
            if self.failures >= policy.failures_to_cool:
                self.cooled_until = time.monotonic() + policy.cooldown_s
                self.failures = 0


class CascadeService:
    """Answers chat requests with a cascade; keeps per-tier health across requests."""

    def __init__(self, cascade: Cascade, policy: ServePolicy = ServePolicy()):
        self.cascade = cascade
        self.policy = policy
        self.health = [TierHealth() for _ in cascade.tiers]

    # -- one tier, with retries
    def _call(self, index: int, messages: list[dict], config: GenerationConfig) -> Generation | None:
        tier, health = self.cascade.tiers[index], self.health[index]
        if not health.available():
            return None
        wait = self.policy.backoff_s
        for attempt in range(self.policy.retries + 1):
            try:
                generation = tier.model.generate(
                    [messages], self.cascade.tier_generation(index, config))[0]
            except ModelError:
                health.record(False, self.policy)
                if attempt == self.policy.retries or not health.available():
                    return None
                time.sleep(wait)
                wait *= 2
                continue
            health.record(True, self.policy)
            return generation
        return None

    def answer(self, question: str, config: GenerationConfig) -> dict:
        """Every tier's step and the final answer; falls back instead of failing."""
        for kind, value in self.stream(question, config, live=False):
            if kind == "result":
                return value
        raise AssertionError("stream() always ends with a result")  # pragma: no cover

    def _result(self, steps: list[TierStep], failed: list[int]) -> dict:
        if not steps:
            raise ApiError(503, "every tier of the cascade failed; try again later",
                           "service_unavailable")
        final = steps[-1]
        fallback = final.decision == "deferred"  # a later tier should have answered, and failed
        return {"steps": steps, "final": final, "fallback": fallback, "failed_tiers": failed}

    def stream(self, question: str, config: GenerationConfig,
               live: bool = True) -> Iterator[tuple[str, object]]:
        """("delta", text) while the answering tier writes, then ("result", result).

        A tier whose answer may yet be deferred is not streamed; the tier that answers is: a kept
        first-tier answer is sent as it stood, a deferred question streams the last tier live
        (`live=False` calls every tier whole)."""
        recall = self.cascade.recall([question])[0]  # None without a strategy memory
        steps, failed = [], []
        given = [] if self.cascade.consults_on_doubt or recall is None else recall.ids
        last = len(self.cascade.tiers) - 1
        for index, with_notes in self.cascade.tier_attempts(recall):
            messages = self.cascade.tier_messages(index, question, None, recall, notes=with_notes)
            if index == 0 and with_notes and recall is not None:
                given = recall.ids
            sent = 0
            if not live or index < last or not self.health[index].available():
                generation = self._call(index, messages, config)
            else:
                generation, sent = yield from self._stream_last(index, messages, config)
            if generation is None:
                failed.append(index + 1)
                continue
            step = self.cascade.decide(index, generation)
            steps.append(step)
            if step.decision != "deferred":
                if generation.text[sent:]:
                    yield "delta", generation.text[sent:]
                break
        result = self._result(steps, failed)
        if result["fallback"]:
            yield "delta", result["final"].generation.text
        result["memory"] = self._memory(question, steps, recall, given)
        yield "result", result

    def _memory(self, question: str, steps: list[TierStep], recall,
                given: list[int]) -> dict | None:
        """The strategies the SLM was given, and what a deferral taught the store."""
        if recall is None:
            return None
        answered = CascadeResult(question, list(steps), strategies=given,
                                 memory_note=recall.note)
        self.cascade.learn(answered)
        lesson = answered.lesson
        return {"strategies": given, "note": answered.memory_note,
                "strategy_cost": answered.memory_cost,
                "lesson": None if lesson is None else {"reason": lesson.reason,
                                                       "stored_id": lesson.stored_id}}

    def _stream_last(self, index: int, messages: list[dict], config: GenerationConfig):
        """Stream the last tier live; returns (its generation or None, characters already sent)."""
        tier, health = self.cascade.tiers[index], self.health[index]
        sent = ""
        try:
            for generation in tier.model.stream(messages,
                                                self.cascade.tier_generation(index, config)):
                if generation.done:
                    health.record(True, self.policy)
                    return generation, len(sent)
                ready = _sendable(generation.text, config)
                if len(ready) > len(sent):
                    yield "delta", ready[len(sent):]
                    sent = ready
        except ModelError:
            health.record(False, self.policy)
            if sent:  # part of the answer went out already: finish with what was written
                return Generation(sent, 0, 0, 0.0), len(sent)
        return self._call(index, messages, config), 0


def _sendable(text: str, config: GenerationConfig) -> str:
    """What of a reply being written can go out now: text that no stop sequence can yet cut
    (a backend finds a stop only once all of it is written, so its first characters are held)."""
    found = find_stop(text, **stop_of(config))
    if found is not None:
        return text[:found.cut]
    hold = max((len(sequence) for sequence in config.stop), default=1) - 1
    return text[:len(text) - hold]


# ---------------------------------------------------------------------------------------- the app

def _question(request: ChatRequest) -> str:
    users = [m for m in request.messages if m.role == "user" and m.text().strip()]
    if not users:
        raise ApiError(400, "messages need at least one non-empty user message", param="messages")
    question = users[-1].text().strip()
    if len(question) > MAX_QUESTION_CHARS:
        raise ApiError(400, f"the last user message is {len(question)} characters; the limit is "
                            f"{MAX_QUESTION_CHARS}", param="messages")
    return question


def _refuse_unsupported(request: ChatRequest) -> None:
    """A field corea cannot honour is refused by name unless it asks for nothing."""
    for name, (neutral, why) in UNSUPPORTED.items():
        value = getattr(request, name)
        if value is not None and value != neutral:
            raise ApiError(400, f"{name}: only {json.dumps(neutral)} is supported ({why})",
                           param=name)
    if request.response_format is not None and request.response_format != {"type": "text"}:
        raise ApiError(400, 'response_format: only {"type": "text"} is supported (the reply is '
                            "corea's reasoning, answer and confidence)", param="response_format")


def _stop_sequences(stop) -> tuple[str, ...]:
    sequences = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(sequences) > MAX_STOP_SEQUENCES:
        raise ApiError(400, f"stop: at most {MAX_STOP_SEQUENCES} sequences, got {len(sequences)}",
                       param="stop")
    if not all(sequences):
        raise ApiError(400, "stop: a stop sequence cannot be empty", param="stop")
    if any(len(sequence) > 256 for sequence in sequences):
        raise ApiError(400, "stop: a stop sequence is at most 256 characters", param="stop")
    return sequences


def _generation_config(request: ChatRequest, base: GenerationConfig, policy: ServePolicy):
    _refuse_unsupported(request)
    if request.stop is not None:
        base = replace(base, stop=_stop_sequences(request.stop))
    asked = request.max_completion_tokens or request.max_tokens
    if asked is not None and asked > policy.max_new_tokens:
        raise ApiError(400, f"max_tokens {asked} is over this server's limit of "
                            f"{policy.max_new_tokens}", param="max_tokens")
    config = replace(base, max_new_tokens=min(asked or base.max_new_tokens, policy.max_new_tokens))
    if request.temperature is not None:
        config = replace(config, temperature=request.temperature)
    if request.top_p is not None:
        config = replace(config, top_p=request.top_p)
    if request.seed is not None:
        config = replace(config, seed=request.seed)
    return config


def _corea_field(result: dict) -> dict:
    final: TierStep = result["final"]
    return {
        "answered_by": final.model, "tier": final.tier, "answer": final.parsed.answer,
        "fallback": result["fallback"], "failed_tiers": result["failed_tiers"],
        "cost": sum(step.cost for step in result["steps"]),
        "tiers": [{"tier": s.tier, "model": s.model, "confidence": s.confidence, "signal": s.signal,
                   "decision": s.decision, "cost": s.cost} for s in result["steps"]],
        **({"memory": result["memory"]} if result.get("memory") else {}),
    }


def _finish_reason(result: dict) -> str:
    """OpenAI's: "length" when the answering tier ran out of tokens, else "stop"."""
    return "length" if result["final"].generation.finish_reason == "length" else "stop"


def _usage(*results: dict) -> dict:
    steps = [step for result in results for step in result["steps"]]
    prompt = sum(s.generation.prompt_tokens for s in steps)
    completion = sum(s.generation.completion_tokens for s in steps)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def create_app(cascade: Cascade, policy: ServePolicy = ServePolicy()) -> FastAPI:
    service = CascadeService(cascade, policy)
    app = FastAPI(title="corea cascade", version="1")
    app.state.service = service

    @app.middleware("http")
    async def bound_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse(error_body(f"request body over {MAX_BODY_BYTES} bytes",
                                           "invalid_request_error"), status_code=413)
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(_, error: ApiError):
        return JSONResponse(error_body(error.message, error.kind, error.param),
                            status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, error: RequestValidationError):
        # The deepest error is the most specific: for content given as a list, the part and
        # field that is wrong rather than "not a string".
        first = max(error.errors(), key=lambda e: len(e.get("loc", ())), default={})
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = f"{where or 'body'}: {first.get('msg', 'invalid request')}"
        if first.get("type") == "extra_forbidden":
            message = (f"{where}: corea's server does not support this field (it is refused "
                       "rather than ignored)")
        return JSONResponse(error_body(message, "invalid_request_error", where or None),
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, error: StarletteHTTPException):
        return JSONResponse(error_body(str(error.detail), "invalid_request_error"),
                            status_code=error.status_code)

    @app.get("/health")
    def health():
        now = time.monotonic()
        return {"status": "ok", "tiers": [
            {"tier": i + 1, "model": t.model.name, "threshold": t.threshold, "signal": t.signal,
             "cooling_down_s": max(0.0, round(h.cooled_until - now, 1))}
            for i, (t, h) in enumerate(zip(cascade.tiers, service.health))]}

    @app.get("/v1/models")
    def models():
        created = int(time.time())
        return {"object": "list", "data": [
            {"id": SERVED_MODEL, "object": "model", "created": created, "owned_by": "corea"}]}

    @app.post("/v1/chat/completions")
    def chat(request: ChatRequest):
        question = _question(request)
        config = _generation_config(request, cascade.generation, policy)
        # n choices are n runs of the cascade, seeded seed, seed + 1, ...: greedy decoding
        # (temperature 0) gives n copies of one reply, as OpenAI's API does.
        configs = [replace(config, seed=(config.seed + i) % (MAX_SEED + 1))
                   for i in range(request.n)]
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if request.stream:
            return StreamingResponse(_sse(service, question, configs, completion_id, created),
                                     media_type="text/event-stream")
        results = [service.answer(question, c) for c in configs]
        return {
            "id": completion_id, "object": "chat.completion", "created": created,
            "model": SERVED_MODEL,
            "choices": [{"index": i, "finish_reason": _finish_reason(result),
                         "message": {"role": "assistant",
                                     "content": result["final"].generation.text},
                         **({"corea": _corea_field(result)} if request.n > 1 else {})}
                        for i, result in enumerate(results)],
            "usage": _usage(*results), "corea": _corea_field(results[0]),
        }

    return app


def _sse(service: CascadeService, question: str, configs: list[GenerationConfig],
         completion_id: str, created: int) -> Iterator[str]:
    """The choices one after another, each ending with its corea field; the last one's end also
    carries the usage of them all."""
    def chunk(index: int, delta: dict, finish: str | None = None, **extra) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": SERVED_MODEL,
                "choices": [{"index": index, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    results = []
    try:
        for index, config in enumerate(configs):
            yield chunk(index, {"role": "assistant", "content": ""})
            for kind, value in service.stream(question, config):
                if kind == "delta" and value:
                    yield chunk(index, {"content": value})
                elif kind == "result":
                    results.append(value)
                    last = len(results) == len(configs)
                    yield chunk(index, {}, _finish_reason(value), corea=_corea_field(value),
                                **({"usage": _usage(*results)} if last else {}))
    except ApiError as error:
        yield f"data: {json.dumps(error_body(error.message, error.kind))}\n\n"
    yield "data: [DONE]\n\n"


def default_config() -> CascadeConfig:
    """What `serve` runs without --config: the embedded pair, the SLM's answer kept when its
    confidence passes the threshold it is served with (corea.embedded.serving_defaults;
    configs/default.json is this, written out)."""
    from corea import embedded

    slm = embedded.default_slm()
    signal, threshold = embedded.serving_defaults(slm)
    return CascadeConfig((TierSpec(slm, threshold, signal=signal),
                          TierSpec(embedded.DEFAULT_LLM)))


def serve(config: CascadeConfig | None, host: str, port: int,
          policy: ServePolicy = ServePolicy(), token: str | None = None) -> None:
    import uvicorn

    cascade = Cascade.from_config(config or default_config(), token=token)
    uvicorn.run(create_app(cascade, policy), host=host, port=port, log_level="info")

