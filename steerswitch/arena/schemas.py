"""Request and response models of the Steering Arena API (pydantic; they are the OpenAPI schema).

Invariants:
- Every request field is bounded (prompt and task length, max new tokens, number of variants,
  numeric ranges, string lengths), so a request can never ask the server for unbounded work.
  The bounds are module constants because they appear in the published OpenAPI schema.
- Request models forbid unknown fields: a misspelt setting is a 422, never silently ignored.
- After validation every variant has a unique, non-empty `name` (derived when not given, a
  repeat suffixed " #2", ...); the names key the streamed events and the result columns.
- Constraints that depend on the loaded model and registry (domain names, layer range, the
  prompt fitting the context) are checked by the server (400); the app's OpenAPI schema also
  lists the domains, scenarios and layer range it serves (`app.specialize_openapi`).
- Numbers in responses are finite or null (JSON has no NaN).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from steerswitch.orchestrator.run import RunRecord
from steerswitch.orchestrator.state import VARIANTS
from steerswitch.webguard import reject_lone_surrogates

MAX_PROMPT_CHARS = 4000
MAX_NEW_TOKENS = 256
MAX_VARIANTS = 6
MAX_TASK_CHARS = 4000
MAX_RAG_CHARS = 20000
MAX_RUN_NEW_TOKENS = 256
MAX_NAME_CHARS = 60
MAX_ALPHA = 1000.0
MAX_LAYER = 1023

Mode = Literal["add", "clamp", "ablate", "rotate"]
Positions = Literal["all", "prompt", "generated"]
AlphaUnits = Literal["absolute", "relative"]
RunVariant = Literal[VARIANTS]  # type: ignore[valid-type]

# One printable line: names are shown in column headers and used as event keys.
_NAME = Field(default=None, min_length=1, max_length=MAX_NAME_CHARS, pattern=r"^[^\x00-\x1f\x7f]+$")
_DOMAIN = Field(min_length=1, max_length=100)
_NOT_BLANK = r"\S"  # unanchored (JSON Schema and pydantic both search): at least one visible character


def _integral(value: Any) -> Any:
    # JSON Schema counts 36.0 as an integer; strict pydantic would refuse it.
    return int(value) if isinstance(value, float) and value.is_integer() else value


Int = Annotated[int, BeforeValidator(_integral)]


class _Strict(BaseModel):
    # strict: JSON types must match the schema (no "5" for 5, no 0 for false)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        return reject_lone_surrogates(data)


# ---- variants ----------------------------------------------------------------------------------
class UnsteeredVariant(_Strict):
    """The model as it is (the reference for KL and for the highlighted differences)."""

    type: Literal["unsteered"]
    name: str | None = _NAME


class DomainVariant(_Strict):
    """A registry domain with its own layer, mode and units; alpha = registry alpha x `scale`."""

    type: Literal["domain"]
    domain: str = _DOMAIN
    scale: float = Field(default=1.0, ge=-100.0, le=100.0)
    positions: Positions = "all"
    name: str | None = _NAME


class ExplicitVariant(_Strict):
    """A registry domain's direction applied at an explicit layer / alpha / mode / positions.

    For `rotate`, alpha is an angle in radians and `alpha_units` is ignored."""

    type: Literal["explicit"]
    domain: str = _DOMAIN
    layer: Int = Field(ge=0, le=MAX_LAYER)
    alpha: float = Field(ge=-MAX_ALPHA, le=MAX_ALPHA)
    mode: Mode = "add"
    positions: Positions = "all"
    alpha_units: AlphaUnits = "relative"
    name: str | None = _NAME


Variant = Annotated[Union[UnsteeredVariant, DomainVariant, ExplicitVariant], Field(discriminator="type")]


def default_name(variant: UnsteeredVariant | DomainVariant | ExplicitVariant) -> str:
    """The column name a variant gets when the request names none."""
    if isinstance(variant, UnsteeredVariant):
        return "unsteered"
    if isinstance(variant, DomainVariant):
        suffix = "" if variant.scale == 1.0 else f" x{variant.scale:g}"
        where = "" if variant.positions == "all" else f" ({variant.positions})"
        return f"{variant.domain}{suffix}{where}"[:MAX_NAME_CHARS]
    units = "r" if variant.alpha_units == "relative" and variant.mode != "rotate" else ""
    return f"{variant.domain} L{variant.layer} {variant.mode} {variant.alpha:g}{units}"[:MAX_NAME_CHARS]


class GenerationSettings(_Strict):
    """Decoding settings shared by every variant of one request (they run as one batch)."""

    max_new_tokens: Int = Field(default=48, ge=1, le=MAX_NEW_TOKENS)
    do_sample: bool = False
    # below 0.01, logits / temperature overflow to inf in float32 and sampling fails mid-stream
    temperature: float = Field(default=1.0, ge=0.01, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: Annotated[int, Field(ge=0, le=2**31 - 1), BeforeValidator(_integral)] | None = None
    repetition_penalty: float | None = Field(default=None, ge=1.0, le=3.0)
    no_repeat_ngram_size: Annotated[int, Field(ge=1, le=16), BeforeValidator(_integral)] | None = None
    chat: bool = False


class GenerateRequest(_Strict):
    """One prompt, several variants, one per-row batch."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=_NOT_BLANK)
    variants: list[Variant] = Field(min_length=1, max_length=MAX_VARIANTS)
    settings: GenerationSettings = Field(default_factory=GenerationSettings)

    @model_validator(mode="after")
    def _name_variants(self) -> "GenerateRequest":
        # Unnamed variants get a descriptive name; a repeated name gets " #2", " #3", ...
        seen: set[str] = set()
        for variant in self.variants:
            base = variant.name if variant.name is not None else default_name(variant)
            name, k = base, 1
            while name in seen:
                k += 1
                name = f"{base[: MAX_NAME_CHARS - 4]} #{k}"
            variant.name = name
            seen.add(name)
        return self


class RunRequest(_Strict):
    """An orchestrated run: a task through a scenario under one variant."""

    task: str = Field(min_length=1, max_length=MAX_TASK_CHARS, pattern=_NOT_BLANK)
    scenario: str = Field(default="simple_bug_fix", min_length=1, max_length=100)
    variant: RunVariant = "dynamic"
    router: Literal["plan", "projection"] = "plan"
    static_domain: str | None = Field(default=None, min_length=1, max_length=100)
    max_new_tokens: Int = Field(default=48, ge=1, le=MAX_RUN_NEW_TOKENS)
    rag_context: str | None = Field(default=None, max_length=MAX_RAG_CHARS)


# ---- per-server limits ---------------------------------------------------------------------------
class ArenaLimits(_Strict):
    """Bounds one server applies on top of the schema's (e.g. smaller ones for a slow machine).
    They are written into the app's OpenAPI schema and enforced with 422s like schema errors."""

    max_prompt_chars: int = Field(default=MAX_PROMPT_CHARS, ge=1, le=MAX_PROMPT_CHARS)
    max_new_tokens: int = Field(default=MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS)
    max_variants: int = Field(default=MAX_VARIANTS, ge=1, le=MAX_VARIANTS)
    max_task_chars: int = Field(default=MAX_TASK_CHARS, ge=1, le=MAX_TASK_CHARS)
    max_run_new_tokens: int = Field(default=MAX_RUN_NEW_TOKENS, ge=1, le=MAX_RUN_NEW_TOKENS)
    max_rag_chars: int = Field(default=MAX_RAG_CHARS, ge=0, le=MAX_RAG_CHARS)


def _limit_error(loc: tuple[str, ...], value: Any, limit: int, what: str) -> dict[str, Any]:
    kind = "too_long" if what != "value" else "less_than_equal"
    msg = f"{what} must be at most {limit} on this server" if what != "value" else f"Input should be less than or equal to {limit} on this server"
    return {"type": kind, "loc": ("body", *loc), "msg": msg, "input": value, "ctx": {"max_length" if what != "value" else "le": limit}}


def apply_generate_limits(body: GenerateRequest, limits: ArenaLimits) -> list[dict[str, Any]]:
    """Errors (FastAPI validation-error dicts) for a request beyond `limits`; an unset
    max_new_tokens is lowered to the limit instead."""
    errors = []
    if len(body.prompt) > limits.max_prompt_chars:
        errors.append(_limit_error(("prompt",), len(body.prompt), limits.max_prompt_chars, "the prompt (characters)"))
    if len(body.variants) > limits.max_variants:
        errors.append(_limit_error(("variants",), len(body.variants), limits.max_variants, "the number of variants"))
    settings = body.settings
    if settings.max_new_tokens > limits.max_new_tokens:
        if "max_new_tokens" in settings.model_fields_set:
            errors.append(_limit_error(("settings", "max_new_tokens"), settings.max_new_tokens, limits.max_new_tokens, "value"))
        else:
            settings.max_new_tokens = limits.max_new_tokens
    return errors


def apply_run_limits(body: RunRequest, limits: ArenaLimits) -> list[dict[str, Any]]:
    """As `apply_generate_limits`, for runs."""
    errors = []
    if len(body.task) > limits.max_task_chars:
        errors.append(_limit_error(("task",), len(body.task), limits.max_task_chars, "the task (characters)"))
    if body.rag_context is not None and len(body.rag_context) > limits.max_rag_chars:
        errors.append(_limit_error(("rag_context",), len(body.rag_context), limits.max_rag_chars, "rag_context (characters)"))
    if body.max_new_tokens > limits.max_run_new_tokens:
        if "max_new_tokens" in body.model_fields_set:
            errors.append(_limit_error(("max_new_tokens",), body.max_new_tokens, limits.max_run_new_tokens, "value"))
        else:
            body.max_new_tokens = limits.max_run_new_tokens
    return errors


# ---- responses ---------------------------------------------------------------------------------
class ErrorResponse(BaseModel):
    detail: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    registry: str | None
    queued_jobs: int = Field(ge=0, description="generation or run jobs waiting or running")


class ModelInfo(BaseModel):
    name: str
    architecture: str
    num_layers: int
    hidden_size: int | None
    context_length: int | None
    dtype: str
    device: str
    chat_template: bool = Field(description="the tokenizer has a chat template (settings.chat applies it)")
    layer_norms: list[float] = Field(description="mean residual norm after each decoder layer (unsteered)")


class DomainInfo(BaseModel):
    domain: str
    layer: int
    alpha: float
    alpha_units: str
    mode: str
    description: str
    keywords: list[str]
    norm: float = Field(description="norm of the domain's direction at its registry layer")
    method: str
    vector_layers: list[int]


class DomainsResponse(BaseModel):
    registry: str | None
    sha256: str | None
    model: str | None
    domains: list[DomainInfo]


class DomainNorms(BaseModel):
    domain: str
    registry_layer: int
    layers: list[int]
    norms: list[float]


class Geometry(BaseModel):
    layer: int | None = Field(description="the layer the cosine matrix is taken at")
    layers: list[int] = Field(description="layers at which at least one domain has a direction")
    domains: list[str] = Field(description="row/column order of `cosine` (domains with a direction at `layer`)")
    cosine: list[list[float]]
    norms: list[DomainNorms]
    model_layer_norms: list[float]


class ScenarioInfo(BaseModel):
    name: str
    description: str
    agents: list[str]


class RunInfo(BaseModel):
    run_id: str
    status: Literal["queued", "running", "done", "error"]
    task: str
    scenario: str
    variant: str
    created: float
    error: str | None = None
    record: RunRecord | None = None


class RunSummary(BaseModel):
    run_id: str
    status: Literal["queued", "running", "done", "error"]
    task: str
    scenario: str
    variant: str
    created: float
    steps: int
    seconds: float | None


# ---- streamed events (the `data:` JSON of each Server-Sent Event) ------------------------------
class QueuedEvent(BaseModel):
    jobs_ahead: int = Field(ge=0, description="jobs queued or running before this one")


class VariantDescription(BaseModel):
    name: str
    type: Literal["unsteered", "domain", "explicit"]
    domain: str | None = None
    layer: int | None = None
    alpha: float | None = None
    mode: str | None = None
    positions: str | None = None
    alpha_units: str | None = None


class StartEvent(BaseModel):
    variants: list[VariantDescription]
    prompt_tokens: int = Field(ge=0)
    max_new_tokens: int = Field(ge=1)


class ArenaTokenEvent(BaseModel):
    variant: str
    row: int = Field(ge=0)
    index: int = Field(ge=0, description="position of this token among the variant's new tokens")
    token_id: int = Field(ge=0)
    text: str = Field(description="new text (may be empty while a multi-byte character is incomplete)")


class ResultEvent(BaseModel):
    variant: str
    row: int = Field(ge=0)
    text: str
    tokens: int = Field(ge=0)
    token_ids: list[int]
    finished: bool = Field(description="stopped at end-of-sequence before max_new_tokens")
    seconds: float = Field(ge=0, description="from the batch's start to this variant's last token")
    tokens_per_second: float | None
    keyword_hits: dict[str, int] = Field(description="domain -> keyword matches (whole sub-words) in the text")
    semantic: dict[str, float] = Field(default_factory=dict, description="domain -> semantic domain score of the text (cosine to the domain's prompts minus cosine to neutral ones)")
    rep3: float = Field(ge=0, le=1)
    kl_first: float | None = Field(description="KL(variant || unsteered) in bits at the first new token")
    kl_mean: float | None = Field(description="mean KL(variant || unsteered) in bits along the variant's text")
    surprise: float | None = Field(description="bits per token of the text under the unsteered model")
    first_divergence: int | None = Field(description="first token index that differs from the unsteered variant")


class DoneEvent(BaseModel):
    seconds: float = Field(ge=0)
    generation_seconds: float = Field(ge=0)
    rows: int = Field(ge=1)


class ErrorEvent(BaseModel):
    message: str
    kind: Literal["request", "server"] = "server"
    before_start: bool = False


class RecordEvent(BaseModel):
    run_id: str
    seconds: float
    totals: dict[str, float]
    steps: int
    final_output: str | None
    patch: str | None


def _generate_events() -> dict[str, type[BaseModel]]:
    return {"queued": QueuedEvent, "start": StartEvent, "token": ArenaTokenEvent, "result": ResultEvent,
            "done": DoneEvent, "error": ErrorEvent}


def _run_events() -> dict[str, type[BaseModel]]:
    from steerswitch.orchestrator.events import RunEnd, RunStart, StepEnd, StepStart, TokenEvent

    return {"run_start": RunStart, "step_start": StepStart, "token": TokenEvent, "step_end": StepEnd, "run_end": RunEnd,
            "record": RecordEvent, "error": ErrorEvent}


GENERATE_EVENTS = _generate_events()
RUN_EVENTS = _run_events()


def sse_event_schema(events: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """Schema of one Server-Sent Event (Open API 3.1 reads `schema` of an event stream per event):
    `event` names the type and `data` is JSON matching that type's model."""
    return {"oneOf": [
        {
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"const": name},
                "data": {"type": "string", "contentMediaType": "application/json",
                         "contentSchema": {"$ref": f"#/components/schemas/{model.__name__}"}},
            },
        }
        for name, model in events.items()
    ]}


def sse_responses(description: str, events: dict[str, type[BaseModel]]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for a Server-Sent Events endpoint and its 4xx errors (the event models are
    added to the components by `app.specialize_openapi`)."""
    return {
        200: {"description": description, "content": {"text/event-stream": {"schema": sse_event_schema(events)}}},
        400: {"model": ErrorResponse, "description": "the request names something this server cannot do"},
        429: {"model": ErrorResponse, "description": "too many jobs are already queued"},
    }
