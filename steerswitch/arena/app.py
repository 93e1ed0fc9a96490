"""The Steering Arena: a FastAPI app that streams baseline and steered outputs side by side.

Routes (JSON unless noted; the OpenAPI schema is at /openapi.json):
    GET  /                       the page (static HTML/CSS/JS modules, no build step)
    GET  /api/health             liveness, model, registry, queued jobs
    GET  /api/model              name, architecture, layers, hidden size, per-layer mean norms
    GET  /api/domains            the registry's entries
    GET  /api/vectors/geometry   cosine matrix between domains (at ?layer=), norms per layer
    GET  /api/scenarios          the orchestrator's scenarios (for the runs view)
    POST /api/generate           Server-Sent Events: one prompt, several variants, ONE batch
    POST /api/runs               Server-Sent Events: an orchestrated run's step events
    GET  /api/runs               runs started here, newest first
    GET  /api/runs/{run_id}      one run's status and record

Invariants:
- Served on loopback by default; there is no CORS middleware (no cross-origin reads), and when
  bound to loopback the Host header must name loopback (`allowed_hosts`), which stops DNS
  rebinding (bracketed IPv6 hosts parsed). Bodies are JSON only (FastAPI refuses other content
  types with 422) and at most 1 MB (413 before parsing); a 422 never echoes the input (webguard.py).
- All model work runs on the single `ModelWorker` thread, one job at a time (see worker.py):
  concurrent requests queue; a request never sees another request's steering.
- Bad input is a 4xx with one clear `detail`: 422 for schema violations (pydantic), 400 for a
  request this server cannot honour (unknown domain, layer out of range, prompt too long for
  the context, unknown scenario), 404 for an unknown run, 429 when the queue is full. Those
  errors are decided before the stream starts; a failure during generation becomes an
  `error` event in the stream.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema

from steerswitch.arena.generation import ArenaRequestError, prepare, run_generation
from steerswitch.arena.runs import RunStore, run_job
from steerswitch.arena.schemas import (
    DomainInfo,
    DomainNorms,
    DomainsResponse,
    GENERATE_EVENTS,
    RUN_EVENTS,
    ArenaLimits,
    ErrorEvent,
    ErrorResponse,
    GenerateRequest,
    Geometry,
    Health,
    ModelInfo,
    QueuedEvent,
    RunInfo,
    RunRequest,
    RunSummary,
    ScenarioInfo,
    apply_generate_limits,
    apply_run_limits,
    sse_responses,
)
from steerswitch.arena.worker import EventChannel, JobCancelled, ModelWorker, QueueFull
from steerswitch.engine import SteeringEngine
from steerswitch.engine.loading import model_info
from steerswitch.engine.loading import context_limit
from steerswitch.orchestrator.graph import OrchestratorError
from steerswitch.orchestrator.router import load_scenarios
from steerswitch.webguard import DEFAULT_MAX_BODY_BYTES, BodyLimit, HostGuard, install_validation_handler

log = logging.getLogger("steerswitch.arena")

STATIC_DIR = Path(__file__).parent / "static"
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1"]
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PAGE_HEADERS = {
    # The page loads only its own files and talks only to this server.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Errors a job raises because of what was asked (-> 400), as opposed to server faults (-> 500).
REQUEST_ERRORS = (ValueError, KeyError, OrchestratorError)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ArenaState:
    """What the routes share: the engine, the registry, the worker and the run store."""

    def __init__(self, engine: SteeringEngine, registry: Any, model_name: str, max_pending: int, max_runs: int, limits: ArenaLimits) -> None:
        if engine.tokenizer is None:
            raise ValueError("the arena needs an engine with a tokenizer (text prompts)")
        self.engine = engine
        self.registry = registry
        self.model_name = model_name
        self.limits = limits
        self.worker = ModelWorker(max_pending=max_pending)
        self.runs = RunStore(max_runs=max_runs)
        self.scenarios = load_scenarios()
        # The worker thread's tokenizer is busy decoding while a job runs; a fast tokenizer must not
        # be used from two threads at once, so request validation (on the event loop) has its own.
        self.tokenizer = copy.deepcopy(engine.tokenizer)
        self._norms: list[float] | None = None

    async def layer_norms(self) -> list[float]:
        """The model's mean residual norm per layer, measured once on the worker thread."""
        if self._norms is None:
            self._norms = await self.worker.call(self.engine.layer_norms)
        return list(self._norms)

    def norms_if_measured(self) -> list[float]:
        return list(self._norms or [])


def _registry_label(registry: Any) -> str | None:
    if registry is None:
        return None
    return str(registry.path) if getattr(registry, "path", None) else registry.model


def _geometry(state: ArenaState, layer: int | None) -> Geometry:
    from steerswitch.vectors.commands import cosine_matrix

    registry = state.registry
    if registry is None:
        return Geometry(layer=None, layers=[], domains=[], cosine=[], norms=[], model_layer_norms=[])
    norms: list[DomainNorms] = []
    all_layers: set[int] = set()
    for domain in registry.domains:
        vector = registry.steering_vector(domain)
        layers = sorted(vector.meta.norms)
        all_layers.update(layers)
        norms.append(DomainNorms(domain=domain, registry_layer=registry.entry(domain).layer, layers=layers,
                                 norms=[float(vector.meta.norms[x]) for x in layers]))
    if layer is None:
        # The layer most domains are registered at (ties: the lowest): cosines compare directions
        # in one layer's residual space only.
        counts = Counter(registry.entry(d).layer for d in registry.domains)
        layer = min(counts, key=lambda x: (-counts[x], x))
    elif layer not in all_layers:
        raise HTTPException(404, f"layer {layer}: no domain has a direction there (layers with directions: {sorted(all_layers)})")
    matrix = cosine_matrix(registry, layer)
    names = list(matrix)
    return Geometry(layer=layer, layers=sorted(all_layers), domains=names,
                    cosine=[[matrix[a][b] for b in names] for a in names], norms=norms,
                    model_layer_norms=state.norms_if_measured())


def specialize_openapi(schema: dict[str, Any], state: ArenaState) -> dict[str, Any]:
    """Write what this server accepts into its OpenAPI schema (in place): the registry's domain
    names, the model's layer range and the known scenarios, so clients and schema-driven tools
    see them. The server checks them either way."""
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    # The models of the streamed events, referenced by the event-stream schemas.
    models = list({m.__name__: m for m in [*GENERATE_EVENTS.values(), *RUN_EVENTS.values()]}.values())
    _, defs = models_json_schema([(m, "serialization") for m in models], ref_template="#/components/schemas/{model}")
    for name, definition in defs.get("$defs", {}).items():
        comps.setdefault(name, definition)
    limits = state.limits

    def cap(props: dict[str, Any], key: str, bound: str, value: int) -> None:
        node = props.get(key)
        if node is None:
            return
        for target in [node, *node.get("anyOf", [])]:
            if target.get("type") in ("string", "integer", "array"):
                target[bound] = value
                if "default" in node and isinstance(node["default"], int) and node["default"] > value:
                    node["default"] = value

    gen = comps.get("GenerateRequest", {}).get("properties", {})
    cap(gen, "prompt", "maxLength", limits.max_prompt_chars)
    cap(gen, "variants", "maxItems", limits.max_variants)
    cap(comps.get("GenerationSettings", {}).get("properties", {}), "max_new_tokens", "maximum", limits.max_new_tokens)
    run_props = comps.get("RunRequest", {}).get("properties", {})
    cap(run_props, "task", "maxLength", limits.max_task_chars)
    cap(run_props, "rag_context", "maxLength", limits.max_rag_chars)
    cap(run_props, "max_new_tokens", "maximum", limits.max_run_new_tokens)
    domains = list(state.registry.domains) if state.registry is not None else []
    for name in ("DomainVariant", "ExplicitVariant"):
        props = comps.get(name, {}).get("properties", {})
        if domains and "domain" in props:
            props["domain"]["enum"] = domains
    layer = comps.get("ExplicitVariant", {}).get("properties", {}).get("layer")
    if layer is not None:
        layer["maximum"] = state.engine.num_layers - 1
    geometry = schema.get("paths", {}).get("/api/vectors/geometry", {}).get("get", {})
    for param in geometry.get("parameters", []):
        if param.get("name") == "layer":
            for branch in param.get("schema", {}).get("anyOf", []):
                if branch.get("type") == "integer":
                    branch["maximum"] = state.engine.num_layers - 1
    run = comps.get("RunRequest", {}).get("properties", {})
    if "scenario" in run:
        run["scenario"]["enum"] = sorted(state.scenarios)
    static = run.get("static_domain", {})
    for branch in static.get("anyOf", []):
        if branch.get("type") == "string" and domains:
            branch["enum"] = domains
    return schema


def create_app(
    engine: SteeringEngine,
    registry: Any = None,
    *,
    model_name: str | None = None,
    allowed_hosts: list[str] | None = None,
    max_pending: int = 8,
    max_runs: int = 100,
    limits: ArenaLimits | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The arena app around a loaded engine (and optional `VectorRegistry`).

    `allowed_hosts`: host names accepted in the Host header (None accepts any; `serve` passes the
    loopback names when bound to loopback). `max_body_bytes`: larger request bodies get 413 unread.
    """
    state = ArenaState(engine, registry, model_name or model_info(engine.model)["name"], max_pending, max_runs, limits or ArenaLimits())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            state.worker.shutdown()

    from steerswitch import __version__

    app = FastAPI(
        title="Steering Arena", version=__version__, lifespan=lifespan,
        description="Baseline and steered generations side by side, orchestrated runs, and vector geometry.",
    )
    app.state.arena = state
    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = specialize_openapi(base_openapi(), state)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    install_validation_handler(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if allowed_hosts is not None:  # added last: the outermost check, before any body is read
        app.add_middleware(HostGuard, allowed=allowed_hosts)

    @app.middleware("http")
    async def page_headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        if response.status_code == 405:
            # Starlette's 405 lists only the first route that matched the path; a path served by
            # several routes (GET and POST /api/runs) allows all of their methods.
            methods = sorted({m for r in app.routes if isinstance(r, APIRoute) and r.path_regex.match(request.url.path) for m in (r.methods or ())})
            if methods:
                response.headers["Allow"] = ", ".join(methods)
        if not request.url.path.startswith(("/api/", "/docs", "/redoc", "/openapi")):
            response.headers.update(PAGE_HEADERS)
        return response

    # ---- page ------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # ---- facts -----------------------------------------------------------------------------
    @app.get("/api/health", response_model=Health, tags=["facts"])
    async def health() -> Health:
        return Health(model=state.model_name, registry=_registry_label(state.registry), queued_jobs=state.worker.pending)

    @app.get("/api/model", response_model=ModelInfo, tags=["facts"])
    async def model() -> ModelInfo:
        info = model_info(engine.model)
        return ModelInfo(
            name=state.model_name, architecture=info["architecture"], num_layers=info["num_layers"],
            hidden_size=info["hidden_size"], context_length=context_limit(engine), dtype=str(engine.dtype).removeprefix("torch."),
            device=str(engine.device), chat_template=bool(getattr(state.tokenizer, "chat_template", None)),
            layer_norms=await state.layer_norms(),
        )

    @app.get("/api/domains", response_model=DomainsResponse, tags=["facts"])
    async def domains() -> DomainsResponse:
        reg = state.registry
        if reg is None:
            return DomainsResponse(registry=None, sha256=None, model=None, domains=[])
        out = []
        for d in reg.domains:
            e = reg.entry(d)
            sv = reg.steering_vector(d)
            out.append(DomainInfo(
                domain=d, layer=e.layer, alpha=e.alpha, alpha_units=e.alpha_units, mode=e.mode, description=e.description,
                keywords=list(e.keywords), norm=float(reg.vector(d).float().norm()), method=sv.meta.method, vector_layers=sv.layers,
            ))
        return DomainsResponse(registry=_registry_label(reg), sha256=reg.sha256(), model=reg.model, domains=out)

    @app.get("/api/vectors/geometry", response_model=Geometry, tags=["facts"],
             responses={404: {"model": ErrorResponse, "description": "no domain has a direction at that layer"}})
    async def geometry(layer: int | None = Query(default=None, ge=0, le=4096, description="layer of the cosine matrix (default: the most common registry layer)")) -> Geometry:
        await state.layer_norms()
        return _geometry(state, layer)

    @app.get("/api/scenarios", response_model=list[ScenarioInfo], tags=["runs"])
    async def scenarios() -> list[ScenarioInfo]:
        return [ScenarioInfo(name=s.name, description=s.description, agents=[step.agent for step in s.steps])
                for s in state.scenarios.values()]

    # ---- side-by-side generation -------------------------------------------------------------
    @app.post("/api/generate", response_class=StreamingResponse, tags=["arena"],
              responses=sse_responses("events: queued, start, token*, result (one per variant), done | error", GENERATE_EVENTS))
    async def generate(body: GenerateRequest) -> StreamingResponse:
        """Generate every variant as one row of one per-row steered batch, streamed as SSE."""
        errors = apply_generate_limits(body, state.limits)
        if errors:
            raise RequestValidationError(errors)
        try:
            prepared = prepare(engine, state.registry, body, state.tokenizer)
        except ArenaRequestError as exc:
            raise HTTPException(400, str(exc)) from None
        channel = EventChannel(asyncio.get_running_loop())

        def job() -> None:
            try:
                if not channel.cancelled.is_set():
                    run_generation(engine, state.registry, prepared, channel.emit)
            except JobCancelled:
                pass
            except Exception as exc:  # noqa: BLE001 - reported to the client as an event
                log.exception("generation failed")
                try:
                    channel.emit("error", ErrorEvent(message=f"{type(exc).__name__}: {exc}").model_dump())
                except JobCancelled:
                    pass
            finally:
                channel.close()

        ahead = state.worker.pending
        try:
            state.worker.submit(job)
        except QueueFull as exc:
            raise HTTPException(429, str(exc)) from None
        first = ("queued", QueuedEvent(jobs_ahead=ahead).model_dump())
        return StreamingResponse(channel.stream([first]), media_type="text/event-stream", headers=SSE_HEADERS)

    # ---- orchestrated runs -----------------------------------------------------------------
    @app.post("/api/runs", response_class=StreamingResponse, tags=["runs"],
              responses=sse_responses("events: run_start, (step_start, token*, step_end)*, run_end, record | error", RUN_EVENTS))
    async def start_run(body: RunRequest) -> StreamingResponse:
        """Start `run_task` (task, scenario, variant) and stream its step events as SSE."""
        errors = apply_run_limits(body, state.limits)
        if errors:
            raise RequestValidationError(errors)
        if body.scenario not in state.scenarios:
            raise HTTPException(400, f"scenario: unknown {body.scenario!r}; choose one of {', '.join(sorted(state.scenarios))}")
        entry = state.runs.new(body)
        channel = EventChannel(asyncio.get_running_loop())
        started = {"yes": False}

        def emit(event: str, data: Any) -> None:
            started["yes"] = True
            channel.emit(event, data)

        def job() -> None:
            try:
                if channel.cancelled.is_set():
                    raise JobCancelled("the client disconnected before the run started")
                run_job(engine, state.registry, entry, emit)
            except JobCancelled as exc:
                entry.status, entry.error = "error", f"stopped: {exc}"
            except Exception as exc:  # noqa: BLE001 - reported as a status or an event
                entry.status, entry.error = "error", f"{type(exc).__name__}: {exc}"
                if started["yes"]:
                    log.exception("run %s failed", entry.run_id)
                kind = "request" if isinstance(exc, REQUEST_ERRORS) and not started["yes"] else "server"
                try:
                    channel.emit("error", ErrorEvent(message=str(exc), kind=kind, before_start=not started["yes"]).model_dump())
                except JobCancelled:
                    pass
            finally:
                channel.close()

        try:
            state.worker.submit(job)
        except QueueFull as exc:
            entry.status, entry.error = "error", str(exc)
            raise HTTPException(429, str(exc)) from None
        # run_task checks the scenario, variant and registry before its first event, so waiting
        # for that event turns a refused run into a 400 instead of an error inside a 200 stream.
        # (The response therefore starts when the run does, after any job queued before it.)
        first = await channel.next()
        if first is None:
            raise HTTPException(500, entry.error or "the run ended without any event")
        if first[0] == "error" and first[1].get("before_start"):
            raise HTTPException(400 if first[1].get("kind") == "request" else 500, first[1]["message"])
        return StreamingResponse(channel.stream([first]), media_type="text/event-stream",
                                 headers={**SSE_HEADERS, "X-Run-Id": entry.run_id})

    @app.get("/api/runs", response_model=list[RunSummary], tags=["runs"])
    async def list_runs() -> list[RunSummary]:
        return [e.summary() for e in reversed(state.runs.list())]

    @app.get("/api/runs/{run_id}", response_model=RunInfo, tags=["runs"],
             responses={404: {"model": ErrorResponse, "description": "no run with this id"}})
    async def get_run(run_id: str = PathParam(min_length=1, max_length=64)) -> RunInfo:
        entry = state.runs.get(run_id)
        if entry is None:
            raise HTTPException(404, f"no run with id {run_id!r} (runs live in memory until the server stops)")
        return entry.info()

    return app


def load_app(
    model: str = "tiny-coder",
    registry: str | Path | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    allowed_hosts: list[str] | None = None,
    limits: ArenaLimits | None = None,
) -> FastAPI:
    """Load a model (hub id, local dir or the shipped alias) and its registry, and build the app.

    Without `registry`, the registry shipped next to the model (`<model dir>/registry.yaml`) is
    used when there is one; otherwise only unsteered variants are available.
    """
    from steerswitch.session import Session

    session = Session.load(model, registry if registry is not None else "auto", device=device, dtype=dtype)
    if session.registry is None:
        log.warning("no registry for %s: only unsteered variants are available", model)
    return create_app(session.engine, session.registry, model_name=str(model), allowed_hosts=allowed_hosts, limits=limits)


def loopback_hosts(host: str) -> list[str] | None:
    """The Host header values to accept when bound to `host` (None: any, for a non-loopback bind)."""
    if is_loopback(host):
        return sorted({*LOOPBACK_HOSTS, host.strip("[]")})
    return None


def build_server(
    model: str = "tiny-coder",
    registry: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str | None = None,
    dtype: str | None = None,
    log_level: str = "info",
    limits: ArenaLimits | None = None,
) -> Any:
    """A configured `uvicorn.Server` for the arena (not started): `serve` runs it; tests start it in
    a thread."""
    import uvicorn

    allowed = loopback_hosts(host)
    if allowed is None:
        log.warning("serving on %s: anyone who can reach this address can run the model", host)
    app = load_app(model, registry, device=device, dtype=dtype, allowed_hosts=allowed, limits=limits)
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))


def serve(
    model: str = "tiny-coder",
    registry: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str | None = None,
    dtype: str | None = None,
    log_level: str = "info",
    limits: ArenaLimits | None = None,
) -> None:
    """Load the model and run the arena on uvicorn (blocks until interrupted)."""
    build_server(model, registry, host=host, port=port, device=device, dtype=dtype, log_level=log_level, limits=limits).run()
