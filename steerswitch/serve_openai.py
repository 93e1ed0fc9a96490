"""An OpenAI-compatible API over a steered model: each request picks its own steering.

Routes (OpenAI's shapes; clients such as the `openai` package, LangChain or aider point their
base URL at ``http://HOST:PORT/v1``):
    GET  /v1/models              the base model and one ``model:domain`` id per registry domain
    POST /v1/chat/completions    chat messages through the tokenizer's chat template
    POST /v1/completions         a plain text prompt

Steering per request, three equivalent spellings (given both ways, the request is refused):
- a model suffix: ``tiny-coder:bug_analysis``, ``tiny-coder:bug_analysis@0.5`` (registry alpha
  times 0.5), ``tiny-coder:bug_analysis+test_writing`` (both steers, added);
- the extension field ``"steer": {"domain": "bug_analysis", "scale": 0.5}`` (or a list of them;
  ``layer``, ``alpha``, ``mode``, ``positions`` override the registry entry);
- neither: unsteered.

Invariants:
- Every error is OpenAI's ``{"error": {"message", "type", "param", "code"}}``: 400 for a request
  this server cannot honour (unknown domain, bad scale or layer, n > 1, schema violations, bad
  JSON; never 500), 401 for a missing or wrong key, 404 for an unknown base model, 413 for a body
  over the limit, 429 (with Retry-After) when the queue is full. Errors never echo the input.
- Requests are checked and tokenized on the event loop (with the server's own tokenizer copy)
  before anything streams. The model runs only on the batcher's thread. Continuous batching
  (`ContinuousBatcher`, `engine.continuous`): a request joins the running decode at the next token
  boundary and leaves it the token it ends. Window batching (`Batcher`, for caches the continuous
  decoder cannot merge): requests arriving within the window run as one batch to its end. Either
  way each row has exactly its own steers, so a request never sees another's, and a streaming
  client that disconnects ends its row at its next token.
- Loopback by default, with the Host header checked against loopback names (DNS rebinding); the
  API key, when set, is compared in constant time.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from steerswitch.arena.worker import EventChannel, JobCancelled, QueueFull
from steerswitch.engine.continuous import ContinuousDecoder, DecodeRow, supports_continuous
from steerswitch.engine.prompts import prompt_ids
from steerswitch.engine.steering import Steer
from steerswitch.webguard import DEFAULT_MAX_BODY_BYTES, BodyLimit, HostGuard

__all__ = ["OpenAIError", "OpenAILimits", "ChatRequest", "CompletionRequest", "SteerField", "create_openai_app",
           "parse_model", "build_server"]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# ---- errors --------------------------------------------------------------------------------------
class OpenAIError(Exception):
    """An error answered as OpenAI's error object."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# ---- request and response models ---------------------------------------------------------------
class SteerField(BaseModel):
    """The ``steer`` extension field: a registry domain times ``scale``, optionally overridden."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    domain: str = Field(alias="vector", min_length=1, max_length=200, description="registry domain")
    scale: float = Field(default=1.0, description="multiplies the registry alpha (ignored when alpha is given)")
    layer: int | None = Field(default=None, ge=0, description="layer (the domain's vector must have one there)")
    alpha: float | None = Field(default=None, description="absolute alpha in the registry's units")
    mode: Literal["add", "clamp", "ablate", "rotate"] | None = None
    positions: Literal["all", "prompt", "generated"] = "all"


class _Sampling(BaseModel):
    # Clients send fields this server does not use (frequency_penalty, logit_bias, user, ...): ignored.
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=400)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    steer: SteerField | list[SteerField] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str = Field(min_length=1, max_length=50)
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text (text parts of a multi-part content joined)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise OpenAIError(400, "only text content parts are supported", param="messages")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "steerswitch"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAILimits(BaseModel):
    """What one request may ask for."""

    max_tokens: int = Field(default=256, ge=1, description="most new tokens per request (also the default)")
    max_prompt_tokens: int = Field(default=4096, ge=1)
    max_pending: int = Field(default=16, ge=1, description="requests queued or running before 429")
    max_batch: int = Field(default=8, ge=1, description="most requests decoded together in one batch")
    batch_window_ms: float = Field(default=10.0, ge=0.0, le=10_000.0, description="how long the first waiting request waits for others to join")
    batching: Literal["auto", "continuous", "window"] = Field(
        default="auto", description="continuous: requests join and leave the running decode per token; window: requests "
                                    "arriving together run as one batch to its end; auto: continuous where the model's cache allows")


# ---- steering ------------------------------------------------------------------------------------
def parse_model(model: str, model_id: str) -> list[SteerField] | None:
    """The steers a model name asks for (None: no suffix); OpenAIError for another base model or a
    malformed suffix."""
    if model == model_id:
        return None
    if not model.startswith(model_id + ":"):
        raise OpenAIError(404, f"The model {model!r} does not exist; this server serves {model_id!r} "
                               f"(and {model_id}:DOMAIN[@SCALE][+DOMAIN...])", param="model", code="model_not_found")
    steers = []
    for part in model[len(model_id) + 1:].split("+"):
        domain, _, scale = part.partition("@")
        if not domain:
            raise OpenAIError(400, f"model: an empty domain in {model!r}", param="model", code="unknown_domain")
        try:
            value = float(scale) if scale else 1.0
        except ValueError:
            raise OpenAIError(400, f"model: scale {scale!r} of {domain!r} is not a number", param="model") from None
        steers.append(SteerField(domain=domain, scale=value))
    return steers


def resolve_steers(registry: Any, fields: list[SteerField], num_layers: int, param: str) -> list[Steer]:
    """`Steer`s for the requested domains; OpenAIError (400) naming what is wrong."""
    if fields and registry is None:
        raise OpenAIError(400, "this server has no vector registry, so it cannot steer", param=param, code="unknown_domain")
    steers = []
    for f in fields:
        if f.domain not in registry:
            raise OpenAIError(400, f"unknown domain {f.domain!r}; this registry has {', '.join(registry.domains)}",
                              param=param, code="unknown_domain")
        if not math.isfinite(f.scale) or (f.alpha is not None and not math.isfinite(f.alpha)):
            raise OpenAIError(400, f"{f.domain}: scale and alpha must be finite numbers", param=param, code="invalid_scale")
        steer: Steer = registry.steer(f.domain, f.scale, positions=f.positions)
        updates: dict[str, Any] = {}
        if f.layer is not None:
            vector = registry.steering_vector(f.domain)
            if f.layer >= num_layers or f.layer not in vector.layers:
                raise OpenAIError(400, f"{f.domain}: no vector at layer {f.layer} (it has {vector.layers})",
                                  param=param, code="invalid_layer")
            updates.update(layer=f.layer, vector=vector.direction(f.layer))
        if f.alpha is not None:
            updates["alpha"] = f.alpha
        if f.mode is not None:
            updates["mode"] = f.mode
        if updates:
            try:
                steer = Steer(**{**steer.model_dump(), **updates})
            except ValueError as exc:
                raise OpenAIError(400, f"{f.domain}: {exc}", param=param) from None
        steers.append(steer)
    return steers


# ---- generation jobs and the batcher -------------------------------------------------------------
class _AllDone(Exception):
    """Every row of a batch has finished (stop sequence, its own token limit, client gone): end early."""


@dataclass(eq=False)  # identity: two jobs are never "equal" (and Steer tensors cannot be compared)
class _Job:
    """One request's generation: one row of a batch. `feed` gets its tokens on the batcher thread;
    `emit` (streaming) sends text deltas; `future` completes when the row is done."""

    ids: list[int]
    steers: list[Steer] | None
    max_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    seed: int | None
    stops: list[str]
    emit: Callable[[str], None] | None = None
    text: str = ""
    sent: int = 0
    tokens: int = 0
    finish: str = "length"
    done: bool = False
    cancelled: bool = False
    hold: int = field(init=False)
    future: "Future[None]" = field(default_factory=Future)

    def __post_init__(self) -> None:
        # A streamed delta may not end inside what could still become a stop sequence.
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def batch_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys may share one `engine.generate` call. A seeded sample runs alone:
        its seed fixes the whole batch's random stream."""
        alone = id(self) if self.do_sample and self.seed is not None else None
        return (self.do_sample, self.temperature, self.top_p, self.seed, alone)

    def _flush(self, upto: int) -> None:
        if self.emit is not None and upto > self.sent and not self.cancelled:
            try:
                self.emit(self.text[self.sent:upto])
            except JobCancelled:  # the client has gone: its row stops here
                self.cancelled = self.done = True
                return
            self.sent = upto

    def feed(self, piece: str) -> None:
        """One new token of this row (its decoded text `piece`)."""
        if self.done:
            return
        self.tokens += 1
        self.text += piece
        for stop in self.stops:
            at = self.text.find(stop, max(0, len(self.text) - len(piece) - len(stop)))
            if at >= 0:
                self.text, self.finish, self.done = self.text[:at], "stop", True
                return
        if self.tokens >= self.max_tokens:
            self.done = True
        self._flush(len(self.text) - self.hold)

    def end(self) -> None:
        """The batch is over: a row that ended before its limit without a stop sequence hit EOS ("stop")."""
        if self.finish != "stop":
            self.finish = "length" if self.tokens >= self.max_tokens else "stop"
        self.done = True
        self._flush(len(self.text))


def run_batch(engine: Any, jobs: list[_Job]) -> None:
    """Generate every job as one row of one per-row steered batch (each row its own steers), all
    with the first job's sampling settings (callers batch only jobs with equal `batch_key`s)."""
    first = jobs[0]

    def on_token(row: int, _token: int, piece: str) -> None:
        jobs[row].feed(piece)
        if all(j.done for j in jobs):
            raise _AllDone

    steers = [j.steers or [] for j in jobs] if any(j.steers for j in jobs) else None
    try:
        engine.generate([j.ids for j in jobs], steers, max_new_tokens=max(j.max_tokens for j in jobs),
                        do_sample=first.do_sample, temperature=first.temperature, top_p=first.top_p, seed=first.seed,
                        on_token=on_token)
    except _AllDone:
        pass
    for job in jobs:
        job.end()


class Batcher:
    """The one thread that runs the model. Requests arriving within `window_s` of the first waiting
    one (up to `max_batch`) are decoded together as one per-row steered batch; a request that
    arrives while a batch runs waits for it to end (no token-level joining)."""

    kind = "window"

    def __init__(self, engine: Any, *, max_batch: int = 8, window_s: float = 0.01, max_pending: int = 16) -> None:
        self.engine, self.max_batch, self.window_s, self.max_pending = engine, max_batch, window_s, max_pending
        self._cond = threading.Condition()
        self._queue: list[_Job] = []
        self._running = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches: list[int] = []  # the size of each batch run (for tests and benchmarks)

    def _in_flight(self) -> int:
        """Requests taken from the queue whose futures are not done yet."""
        return self._running

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._in_flight()

    def submit(self, job: _Job) -> None:
        """Queue `job`; QueueFull when `max_pending` requests are already queued or running."""
        with self._cond:
            if len(self._queue) + self._in_flight() >= self.max_pending:
                raise QueueFull(f"{len(self._queue) + self._in_flight()} requests are queued or running "
                                f"(the limit is {self.max_pending}); try again shortly")
            self._closed = False
            self._queue.append(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="openai-model", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = time.monotonic() + self.window_s
            while len(self._queue) < self.max_batch and not self._closed and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            key = self._queue[0].batch_key()
            batch = [j for j in self._queue if j.batch_key() == key][:self.max_batch]
            self._queue = [j for j in self._queue if all(j is not b for b in batch)]
            self._running = len(batch)
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            error: Exception | None = None
            try:
                live = [j for j in batch if not j.cancelled]
                if live:
                    self.batches.append(len(live))
                    run_batch(self.engine, live)
            except Exception as exc:  # noqa: BLE001 - handed to each request of the batch
                error = exc
            with self._cond:  # before the futures: a finished request is no longer pending
                self._running = 0
            for job in batch:
                if error is None:
                    job.future.set_result(None)
                elif not job.future.done():
                    job.future.set_exception(error)

    def shutdown(self) -> None:
        """Drop queued requests (their futures are cancelled); a running batch finishes."""
        with self._cond:
            self._closed = True
            queued, self._queue = self._queue, []
            self._cond.notify_all()
        for job in queued:
            job.future.cancel()


class ContinuousBatcher(Batcher):
    """The one thread that runs the model, batching continuously (`engine.continuous`): a request
    joins the running decode at the next token boundary (up to `max_batch` rows) and leaves it when
    it ends, so it never waits for a longer one. `window_s` applies only when nothing runs: the
    first request waits that long for others to arrive with it."""

    kind = "continuous"

    def __init__(self, engine: Any, *, max_batch: int = 8, window_s: float = 0.01, max_pending: int = 16) -> None:
        super().__init__(engine, max_batch=max_batch, window_s=window_s, max_pending=max_pending)
        self.decoder = ContinuousDecoder(engine)
        self._live: dict[int, _Job] = {}  # id(DecodeRow) -> its job, while the row runs
        self._admitting = 0  # taken from the queue, not yet in _live

    def _in_flight(self) -> int:
        return len(self._live) + self._admitting

    def _admit(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue and not self.decoder.live and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            if not self.decoder.live:
                deadline = time.monotonic() + self.window_s
                while len(self._queue) < self.max_batch and not self._closed and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
            room = max(0, self.max_batch - self.decoder.live)
            admitted, self._queue = self._queue[:room], self._queue[room:]
            self._admitting = len(admitted)
            return admitted

    def _row(self, job: _Job) -> DecodeRow:
        def on_token(_token: int, piece: str) -> bool:
            job.feed(piece)
            return not job.done

        def on_end(_reason: str) -> None:
            self._live.pop(id(row), None)
            job.end()
            job.future.set_result(None)

        row = DecodeRow(job.ids, job.steers, job.max_tokens, job.do_sample, job.temperature, job.top_p, job.seed,
                        on_token=on_token, on_end=on_end)
        self._live[id(row)] = job
        return row

    def _loop(self) -> None:
        while (admitted := self._admit()) is not None:
            for job in [j for j in admitted if j.cancelled]:
                job.future.set_result(None)
            joining = [(job, self._row(job)) for job in admitted if not job.cancelled]
            with self._cond:
                self._admitting = 0
            try:
                self.decoder.add_many([row for _, row in joining])
            except Exception:  # noqa: BLE001 - find the failing request: each alone, the others run on
                for job, row in joining:
                    try:
                        self.decoder.add(row)
                    except Exception as exc:  # noqa: BLE001 - this request fails
                        self._live.pop(id(row), None)
                        job.future.set_exception(exc)
            try:
                self.decoder.step()
            except Exception as exc:  # noqa: BLE001 - a failed step fails every row in it
                for row in self.decoder.abort():
                    job = self._live.pop(id(row))
                    job.future.set_exception(exc)
        for row in self.decoder.abort():  # shut down: the running requests end now
            self._live.pop(id(row)).future.cancel()


# ---- the app -------------------------------------------------------------------------------------
class _State:
    def __init__(self, session: Any, model_id: str, api_key: str | None, limits: OpenAILimits) -> None:
        if session.tokenizer is None:
            raise ValueError("the OpenAI server needs a model with a tokenizer")
        self.session, self.engine, self.registry = session, session.engine, session.registry
        self.model_id, self.api_key, self.limits = model_id, api_key, limits
        continuous = limits.batching == "continuous" or (limits.batching == "auto" and supports_continuous(session.engine))
        if limits.batching == "continuous" and not supports_continuous(session.engine):
            raise ValueError("batching: this model's KV cache is not a plain full-attention cache; use window batching")
        self.batcher = (ContinuousBatcher if continuous else Batcher)(
            session.engine, max_batch=limits.max_batch, window_s=limits.batch_window_ms / 1000, max_pending=limits.max_pending)
        # The batcher's tokenizer is busy while a job decodes; a fast tokenizer must not be used from
        # two threads at once, so request checks on the event loop use their own copy.
        self.tokenizer = copy.deepcopy(session.tokenizer)
        self.context = session.context_limit()
        self.created = int(time.time())


def _error_type(status: int) -> str:
    return {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")


def _prepare(state: _State, body: _Sampling, prompt: Any, chat: bool, max_tokens: int | None, max_param: str) -> tuple[_Job, int]:
    """The job for a request and its prompt token count, or OpenAIError for what cannot be served."""
    if body.n != 1:
        raise OpenAIError(400, "n: only n=1 is supported", param="n", code="unsupported_value")
    suffix = parse_model(body.model, state.model_id)
    if suffix is not None and body.steer is not None:
        raise OpenAIError(400, "steer: give the steering either as a model suffix or as the steer field, not both", param="steer")
    fields = suffix if suffix is not None else ([body.steer] if isinstance(body.steer, SteerField) else list(body.steer or []))
    steers = resolve_steers(state.registry, fields, state.engine.num_layers, "model" if suffix is not None else "steer")
    limit = state.limits.max_tokens
    wanted = max_tokens if max_tokens is not None else limit
    if wanted > limit:
        raise OpenAIError(400, f"{max_param}: at most {limit} tokens per request on this server", param=max_param)
    try:
        ids = prompt_ids(state.tokenizer, prompt, chat)
    except (TypeError, ValueError) as exc:
        raise OpenAIError(400, f"prompt: {exc}", param="messages" if chat else "prompt") from None
    cap = state.limits.max_prompt_tokens if state.context is None else min(state.limits.max_prompt_tokens, state.context - 1)
    if len(ids) > cap:
        raise OpenAIError(400, f"the prompt has {len(ids)} tokens; this server takes at most {cap}",
                          param="messages" if chat else "prompt", code="context_length_exceeded")
    if state.context is not None:
        wanted = min(wanted, state.context - len(ids))
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise OpenAIError(400, "stop: at most 4 non-empty sequences", param="stop")
    temperature = 1.0 if body.temperature is None else body.temperature  # OpenAI's default samples
    do_sample = temperature > 0
    return _Job(ids, steers or None, wanted, do_sample, temperature if do_sample else 1.0,
                body.top_p if body.top_p is not None else 1.0, body.seed, stops), len(ids)


def create_openai_app(
    session: Any,
    *,
    model_id: str | None = None,
    api_key: str | None = None,
    allowed_hosts: list[str] | None = None,
    limits: OpenAILimits | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The OpenAI-compatible app around a loaded `Session` (its engine and registry).

    `model_id`: the base model name clients use (default: the session's name). `api_key`: when set,
    requests need ``Authorization: Bearer <api_key>``. `allowed_hosts`: Host header names accepted
    (None: any; `serve-openai` passes the loopback names when bound to loopback).
    """
    state = _State(session, model_id or session.name, api_key, limits or OpenAILimits())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            state.batcher.shutdown()

    from steerswitch import __version__

    app = FastAPI(title="steerswitch OpenAI-compatible API", version=__version__, lifespan=lifespan)
    app.state.openai = state

    @app.exception_handler(OpenAIError)
    async def openai_error(_request: Request, exc: OpenAIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # As webguard's handler: name the field and the problem, never echo the input. OpenAI answers 400.
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg', '')}"
                            for e in errors[:5])
        return OpenAIError(400, message or "invalid request", param=".".join(loc) or None, code="invalid_request").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return OpenAIError(exc.status_code, str(exc.detail), type=_error_type(exc.status_code)).response()

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if allowed_hosts is not None:  # added last: the outermost check, before any body is read
        app.add_middleware(HostGuard, allowed=allowed_hosts)

    def check_key(request: Request) -> None:
        if state.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), state.api_key.encode()):
            raise OpenAIError(401, "Incorrect API key provided", type="authentication_error", code="invalid_api_key")

    @app.get("/v1/models", response_model=ModelList)
    async def models(request: Request) -> ModelList:
        check_key(request)
        ids = [state.model_id] + [f"{state.model_id}:{d}" for d in (state.registry.domains if state.registry else [])]
        return ModelList(data=[ModelCard(id=i, created=state.created) for i in ids])

    def submit(job: _Job) -> None:
        try:
            state.batcher.submit(job)
        except QueueFull as exc:
            raise OpenAIError(429, str(exc), type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from None

    async def run(job: _Job) -> None:
        submit(job)
        await asyncio.wrap_future(job.future)

    def stream(job: _Job, chunk: Callable[[str | None, str | None], dict[str, Any]], usage: Callable[[], dict[str, Any]] | None) -> StreamingResponse:
        channel = EventChannel(asyncio.get_running_loop())
        job.emit = lambda text: channel.emit("delta", text)

        def finished(future: "Future[None]") -> None:  # on the batcher thread
            try:
                if future.cancelled():
                    channel.emit("error", "the server is shutting down")
                elif future.exception() is not None:
                    exc = future.exception()
                    channel.emit("error", f"{type(exc).__name__}: {exc}")
                elif not job.cancelled:
                    channel.emit("finish", job.finish)
            except JobCancelled:
                pass
            finally:
                channel.close()

        submit(job)
        job.future.add_done_callback(finished)

        def data(obj: Any) -> bytes:
            return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()

        async def events() -> AsyncIterator[bytes]:
            try:
                yield data(chunk("", None))
                while (item := await channel.next()) is not None:
                    kind, value = item
                    if kind == "delta":
                        yield data(chunk(value, None))
                    elif kind == "finish":
                        yield data(chunk(None, value))
                        if usage is not None:
                            yield data(usage())
                    else:
                        yield data(OpenAIError(500, value, type="server_error").body())
                yield b"data: [DONE]\n\n"
            finally:
                channel.cancel()  # a client gone mid-stream: its row stops at its next token
                job.cancelled = True

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    def include_usage(body: _Sampling) -> bool:
        return bool((body.stream_options or {}).get("include_usage"))

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        check_key(request)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        job, n_prompt = _prepare(state, body, messages, True, max_tokens, param)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def usage() -> dict[str, Any]:
            return Usage(prompt_tokens=n_prompt, completion_tokens=job.tokens, total_tokens=n_prompt + job.tokens).model_dump()

        if body.stream:
            def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
                delta: dict[str, Any] = {} if text is None else ({"role": "assistant", "content": ""} if text == "" else {"content": text})
                return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

            def usage_chunk() -> dict[str, Any]:
                return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                        "choices": [], "usage": usage()}

            return stream(job, chunk, usage_chunk if include_usage(body) else None)
        await run(job)
        return {"id": rid, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": job.text}, "logprobs": None,
                             "finish_reason": job.finish}],
                "usage": usage()}

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_key(request)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise OpenAIError(400, "prompt: give one prompt per request", param="prompt", code="unsupported_value")
        job, n_prompt = _prepare(state, body, prompts[0], False, body.max_tokens, "max_tokens")
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def usage() -> dict[str, Any]:
            return Usage(prompt_tokens=n_prompt, completion_tokens=job.tokens, total_tokens=n_prompt + job.tokens).model_dump()

        if body.stream:
            def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
                return {"id": rid, "object": "text_completion", "created": created, "model": body.model,
                        "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}

            def usage_chunk() -> dict[str, Any]:
                return {"id": rid, "object": "text_completion", "created": created, "model": body.model,
                        "choices": [], "usage": usage()}

            return stream(job, chunk, usage_chunk if include_usage(body) else None)
        await run(job)
        return {"id": rid, "object": "text_completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "text": job.text, "logprobs": None, "finish_reason": job.finish}],
                "usage": usage()}

    return app


def build_server(session: Any, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                 limits: OpenAILimits | None = None, log_level: str = "info") -> Any:
    """A configured `uvicorn.Server` (not started) for the OpenAI app around `session`."""
    import uvicorn

    from steerswitch.arena.app import loopback_hosts

    app = create_openai_app(session, api_key=api_key, allowed_hosts=loopback_hosts(host), limits=limits)
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
