"""The arena's HTTP API through FastAPI's test client: facts, validation errors, streaming event
order and content, batched variants equal to the same variants alone, no cross-steering between
concurrent requests, orchestrated runs, queue limits and the loopback protections."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from steerswitch.arena.app import LOOPBACK_HOSTS, create_app
from steerswitch.arena.generation import prepare, run_generation
from steerswitch.arena.schemas import MAX_NEW_TOKENS, MAX_PROMPT_CHARS, MAX_VARIANTS, GenerateRequest
from steerswitch.arena.worker import EventChannel, JobCancelled
from steerswitch.benchmarks.metrics import rep_n
from test_arena_support import arena_engine, arena_registry, one_torch_thread, parse_sse  # noqa: F401 - autouse fixture

PROMPT = "def parse(text):\n    return"


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    root = tmp_path_factory.mktemp("arena")
    return arena_engine(root), arena_registry(root / "registry")


@pytest.fixture(scope="module")
def client(parts: tuple[Any, Any]) -> Any:
    engine, registry = parts
    with TestClient(create_app(engine, registry)) as c:
        yield c


def generate(client: TestClient, variants: list[dict[str, Any]], max_new_tokens: int = 10, prompt: str = PROMPT, **settings: Any) -> list[tuple[str, Any]]:
    r = client.post("/api/generate", json={"prompt": prompt, "variants": variants, "settings": {"max_new_tokens": max_new_tokens, **settings}})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return parse_sse(r.text)


def results(events: list[tuple[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["variant"]: d for e, d in events if e == "result"}


VARIANTS = [
    {"type": "unsteered"},
    {"type": "domain", "domain": "test_writing"},
    {"type": "explicit", "domain": "bug_analysis", "layer": 1, "alpha": 0.8, "mode": "add"},
    {"type": "domain", "domain": "patch_writing", "scale": 0.5, "positions": "generated", "name": "patch half"},
]


# ---- facts -------------------------------------------------------------------------------------
def test_facts_describe_model_and_registry(client: TestClient, parts: tuple[Any, Any]) -> None:
    engine, registry = parts
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["queued_jobs"] == 0
    model = client.get("/api/model").json()
    assert model["num_layers"] == engine.num_layers == len(model["layer_norms"])
    assert model["hidden_size"] == engine.hidden_size
    assert model["layer_norms"] == pytest.approx(engine.layer_norms())
    domains = client.get("/api/domains").json()
    assert [d["domain"] for d in domains["domains"]] == registry.domains
    assert domains["sha256"] == registry.sha256()
    for d in domains["domains"]:
        assert d["layer"] == registry.entry(d["domain"]).layer
        assert d["keywords"] == registry.keywords(d["domain"])


def test_geometry_is_the_cosine_of_the_vectors(client: TestClient, parts: tuple[Any, Any]) -> None:
    _, registry = parts
    geo = client.get("/api/vectors/geometry").json()
    assert geo["layer"] == 2  # two of the four domains are registered at layer 2
    names = geo["domains"]
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            va = registry.steering_vector(a).direction(2)
            vb = registry.steering_vector(b).direction(2)
            assert geo["cosine"][i][j] == pytest.approx(float(torch.nn.functional.cosine_similarity(va, vb, dim=0)), abs=1e-5)
    by_domain = {n["domain"]: n for n in geo["norms"]}
    assert by_domain["code_reading"]["norms"][1] == pytest.approx(float(registry.steering_vector("code_reading").direction(1).norm()), rel=1e-5)
    other = client.get("/api/vectors/geometry", params={"layer": 0}).json()
    assert other["layer"] == 0 and other["cosine"] != geo["cosine"]
    r = client.get("/api/vectors/geometry", params={"layer": 9})
    assert r.status_code == 404 and "layer 9" in r.json()["detail"]


# ---- validation --------------------------------------------------------------------------------
UNSTEERED = [{"type": "unsteered"}]


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"prompt": "", "variants": UNSTEERED}, 422, "prompt"),
        ({"prompt": " \n\t", "variants": UNSTEERED}, 422, "prompt"),
        ({"prompt": "x", "variants": UNSTEERED, "settings": {"max_new_tokens": "5"}}, 422, "max_new_tokens"),
        ({"prompt": "x", "variants": UNSTEERED, "settings": {"do_sample": 0}}, 422, "do_sample"),
        ({"prompt": "x" * (MAX_PROMPT_CHARS + 1), "variants": UNSTEERED}, 422, "prompt"),
        ({"prompt": "x", "variants": []}, 422, "variants"),
        ({"prompt": "x", "variants": [{"type": "domain", "domain": "test_writing", "name": f"v{i}"} for i in range(MAX_VARIANTS + 1)]}, 422, "variants"),
        ({"prompt": "x", "variants": UNSTEERED, "settings": {"max_new_tokens": 0}}, 422, "max_new_tokens"),
        ({"prompt": "x", "variants": UNSTEERED, "settings": {"max_new_tokens": MAX_NEW_TOKENS + 1}}, 422, "max_new_tokens"),
        ({"prompt": "x", "variants": UNSTEERED, "settings": {"temprature": 0.5}}, 422, "temprature"),
        ({"prompt": "x", "variants": [{"type": "magic"}]}, 422, "type"),
        ({"prompt": "x", "variants": [{"type": "explicit", "domain": "test_writing", "layer": 1, "alpha": 1e9}]}, 422, "alpha"),
        ({"prompt": "x", "variants": [{"type": "domain", "domain": "nope"}]}, 400, "unknown domain 'nope'"),
        ({"prompt": "x", "variants": [{"type": "explicit", "domain": "test_writing", "layer": 4, "alpha": 1.0}]}, 400, "layer 4 is out of range"),
        ({"prompt": "x", "variants": [{"type": "explicit", "domain": "test_writing", "layer": 1, "alpha": 0.3, "name": "a\nb"}]}, 422, "name"),
        ({"prompt": "def f(x): return x + 1\n" * 170, "variants": UNSTEERED, "settings": {"max_new_tokens": 200}}, 400, "context"),
    ],
)
def test_generate_validation_errors(client: TestClient, body: dict[str, Any], status: int, needle: str) -> None:
    r = client.post("/api/generate", json=body)
    assert r.status_code == status, r.text
    assert needle in str(r.json()["detail"])


def test_repeated_names_are_numbered_and_rotate_takes_radians(client: TestClient) -> None:
    variants = [{"type": "unsteered"}, {"type": "unsteered"},
                {"type": "explicit", "domain": "test_writing", "layer": 1, "alpha": 0.3, "mode": "rotate", "alpha_units": "relative"}]
    events = generate(client, variants, max_new_tokens=3)
    start = events[1][1]
    assert [v["name"] for v in start["variants"]] == ["unsteered", "unsteered #2", "test_writing L1 rotate 0.3"]
    assert start["variants"][2]["alpha_units"] == "absolute"  # an angle: units do not apply
    res = results(events)
    assert res["unsteered"]["token_ids"] == res["unsteered #2"]["token_ids"]


def test_non_json_body_is_refused(client: TestClient) -> None:
    # A cross-site form can only send simple content types; the API accepts JSON alone.
    r = client.post("/api/generate", content='{"prompt": "x", "variants": [{"type": "unsteered"}]}', headers={"content-type": "text/plain"})
    assert r.status_code == 422


def test_without_registry_only_unsteered(parts: tuple[Any, Any]) -> None:
    engine, _ = parts
    with TestClient(create_app(engine, None)) as c:
        r = c.post("/api/generate", json={"prompt": "x", "variants": [{"type": "domain", "domain": "test_writing"}]})
        assert r.status_code == 400 and "no vector registry" in r.json()["detail"]
        assert c.get("/api/domains").json()["domains"] == []
        assert c.get("/api/vectors/geometry").json()["cosine"] == []
        r = c.post("/api/runs", json={"task": "fix it", "variant": "dynamic"})
        assert r.status_code == 400 and "registry" in r.json()["detail"]


def test_queue_limit_gives_429(parts: tuple[Any, Any]) -> None:
    engine, registry = parts
    with TestClient(create_app(engine, registry, max_pending=0)) as c:
        r = c.post("/api/generate", json={"prompt": "x", "variants": UNSTEERED})
        assert r.status_code == 429 and "queued" in r.json()["detail"]


# ---- streaming ---------------------------------------------------------------------------------
def test_stream_order_and_content(client: TestClient) -> None:
    n = 9
    events = generate(client, VARIANTS, max_new_tokens=n)
    names = [e for e, _ in events]
    assert names[0] == "queued" and names[1] == "start" and names[-1] == "done"
    first_result = names.index("result")
    assert set(names[2:first_result]) == {"token"}
    assert names[first_result:-1] == ["result"] * len(VARIANTS)
    start = events[1][1]
    expected_names = ["unsteered", "test_writing", "bug_analysis L1 add 0.8r", "patch half"]
    assert [v["name"] for v in start["variants"]] == expected_names
    assert start["variants"][3]["positions"] == "generated" and start["variants"][3]["alpha"] == pytest.approx(1.0)  # 2.0 x 0.5
    res = results(events)
    assert list(res) == expected_names
    for name in expected_names:
        tokens = [d for e, d in events if e == "token" and d["variant"] == name]
        # the test model never emits EOS: every row makes exactly n tokens, streamed in order
        assert [t["index"] for t in tokens] == list(range(n))
        assert [t["token_id"] for t in tokens] == res[name]["token_ids"]
        r = res[name]
        assert r["tokens"] == n and not r["finished"]
        assert r["seconds"] > 0 and r["tokens_per_second"] == pytest.approx(n / r["seconds"])
        assert r["rep3"] == pytest.approx(rep_n(r["token_ids"], 3))
        assert set(r["keyword_hits"]) == {"test_writing", "bug_analysis", "patch_writing"}  # the domains the request names
        assert set(r["semantic"]) == set(r["keyword_hits"]) and all(-2.0 <= v <= 2.0 for v in r["semantic"].values())
        if "\ufffd" not in r["text"]:
            assert "".join(t["text"] for t in tokens) == r["text"]
    assert res["unsteered"]["kl_first"] == 0.0 and res["unsteered"]["kl_mean"] == 0.0
    assert res["unsteered"]["first_divergence"] is None
    for name in expected_names[1:]:
        assert res[name]["kl_mean"] > 0  # steering moved the distribution


@pytest.mark.parametrize("chat", [False, True])
def test_prompt_tokens_are_what_the_engine_feeds(client: TestClient, parts: tuple[Any, Any], chat: bool) -> None:
    engine, _ = parts
    events = generate(client, [{"type": "unsteered"}], max_new_tokens=2, chat=chat)
    prompt = [{"role": "user", "content": PROMPT}] if chat else PROMPT
    ids, _mask = engine.encode([prompt], chat=chat)
    assert events[1][1]["prompt_tokens"] == ids.shape[1]


def test_token_events_interleave_rows(client: TestClient) -> None:
    # One batch: the rows advance together, so row 1's first token arrives before row 0's last.
    events = generate(client, VARIANTS[:2], max_new_tokens=6)
    order = [(d["row"], d["index"]) for e, d in events if e == "token"]
    assert order.index((1, 0)) < order.index((0, 5))


def test_batched_variants_equal_the_same_variants_alone(client: TestClient) -> None:
    batched = results(generate(client, VARIANTS, max_new_tokens=12, repetition_penalty=1.3))
    for variant in VARIANTS:
        alone = results(generate(client, [variant], max_new_tokens=12, repetition_penalty=1.3))
        (name, single), = alone.items()
        assert single["token_ids"] == batched[name]["token_ids"], name
        assert single["text"] == batched[name]["text"]
    texts = {tuple(r["token_ids"]) for r in batched.values()}
    assert len(texts) > 1  # the variants really differ, so equality above is not vacuous


def test_concurrent_requests_do_not_cross_steer(client: TestClient) -> None:
    a = [{"type": "domain", "domain": "test_writing", "scale": 1.5}]
    b = [{"type": "explicit", "domain": "bug_analysis", "layer": 2, "alpha": -1.5}]
    plain = [{"type": "unsteered"}]
    alone = {k: results(generate(client, v, max_new_tokens=16)) for k, v in (("a", a), ("b", b), ("plain", plain))}
    assert alone["a"] != alone["b"]
    got: dict[str, Any] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(key: str, variants: list[dict[str, Any]]) -> None:
        try:
            barrier.wait()
            got[key] = results(generate(client, variants, max_new_tokens=16))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    def runner() -> None:
        try:
            barrier.wait()
            r = client.post("/api/runs", json={"task": "fix the off-by-one in mean", "variant": "dynamic", "max_new_tokens": 6})
            got["run"] = r.status_code
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=("a", a)), threading.Thread(target=worker, args=("b", b)),
               threading.Thread(target=worker, args=("plain", plain)), threading.Thread(target=runner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert got["run"] == 200
    for key in ("a", "b", "plain"):
        (name, res), = got[key].items()
        assert res["token_ids"] == alone[key][name]["token_ids"], key
    assert client.get("/api/health").json()["queued_jobs"] == 0


# ---- cancellation ------------------------------------------------------------------------------
def test_a_cancelled_job_stops_and_leaves_the_engine_unsteered(parts: tuple[Any, Any]) -> None:
    engine, registry = parts
    request = GenerateRequest.model_validate({"prompt": PROMPT, "variants": VARIANTS, "settings": {"max_new_tokens": 40}})
    prepared = prepare(engine, registry, request, engine.tokenizer)
    seen: list[str] = []

    def emit(event: str, data: Any) -> None:
        seen.append(event)
        if seen.count("token") == 5:
            raise JobCancelled("client left")

    with pytest.raises(JobCancelled):
        run_generation(engine, registry, prepared, emit)
    assert seen.count("token") == 5 and "result" not in seen
    assert engine.active() is None


def test_channel_refuses_events_after_cancel() -> None:
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        channel = EventChannel(loop)
        channel.emit("token", {"x": 1})
        channel.cancel()
        with pytest.raises(JobCancelled):
            channel.emit("token", {"x": 2})
    finally:
        loop.close()


# ---- runs --------------------------------------------------------------------------------------
def test_run_streams_steps_and_keeps_the_record(client: TestClient) -> None:
    r = client.post("/api/runs", json={"task": "The mean function divides by len - 1.", "scenario": "test_failure", "variant": "dynamic", "max_new_tokens": 5})
    assert r.status_code == 200, r.text
    events = parse_sse(r.text)
    names = [e for e, _ in events if e != "token"]
    scenario = {s["name"]: s for s in client.get("/api/scenarios").json()}["test_failure"]
    n = len(scenario["agents"])
    assert names == ["run_start"] + ["step_start", "step_end"] * n + ["run_end", "record"]
    run_id = events[0][1]["run_id"]
    assert r.headers["x-run-id"] == run_id
    starts = [d for e, d in events if e == "step_start"]
    assert [s["agent"] for s in starts] == scenario["agents"]
    for s in starts:  # dynamic: each step steered by its routed domain at its registry layer
        assert s["domain"] == s["routed_domain"] and s["layer"] is not None and s["alpha_effective"] is not None
    ends = [d["record"] for e, d in events if e == "step_end"]
    assert all(rec["new_tokens"] == 5 for rec in ends)
    tokens_step0 = "".join(d["text"] for e, d in events if e == "token" and d["index"] == 0)
    if "\ufffd" not in ends[0]["output"]:
        assert tokens_step0 == ends[0]["output"]
    info = client.get(f"/api/runs/{run_id}").json()
    assert info["status"] == "done" and info["error"] is None
    assert [s["output"] for s in info["record"]["steps"]] == [rec["output"] for rec in ends]
    assert info["record"]["variant"] == "dynamic"
    listed = client.get("/api/runs").json()
    assert listed[0]["run_id"] == run_id and listed[0]["steps"] == n


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"task": ""}, 422, "task"),
        ({"task": "x", "variant": "sideways"}, 422, "variant"),
        ({"task": "x", "max_new_tokens": 0}, 422, "max_new_tokens"),
        ({"task": "x", "scenario": "nope"}, 400, "unknown 'nope'"),
        ({"task": "x", "variant": "static", "static_domain": "nope"}, 400, "nope"),
    ],
)
def test_run_validation_errors(client: TestClient, body: dict[str, Any], status: int, needle: str) -> None:
    r = client.post("/api/runs", json=body)
    assert r.status_code == status, r.text
    assert needle in str(r.json()["detail"])


def test_unknown_run_is_404(client: TestClient) -> None:
    r = client.get("/api/runs/doesnotexist")
    assert r.status_code == 404 and "doesnotexist" in r.json()["detail"]


# ---- loopback protections ----------------------------------------------------------------------
def test_no_cors_and_page_headers(client: TestClient) -> None:
    r = client.get("/api/health", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = client.options("/api/generate", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers
    page = client.get("/")
    assert page.status_code == 200 and "Steering Arena" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/main.js").status_code == 200


def test_host_header_must_be_loopback(parts: tuple[Any, Any]) -> None:
    engine, registry = parts
    with TestClient(create_app(engine, registry, allowed_hosts=LOOPBACK_HOSTS), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/health").status_code == 200
        assert c.get("/api/health", headers={"Host": "localhost:8000"}).status_code == 200
        assert c.get("/api/health", headers={"Host": "rebound.example:8000"}).status_code == 400


def test_semantic_scores_come_from_the_one_scorer() -> None:
    from steerswitch.arena.generation import _semantic_scores
    from steerswitch.benchmarks.metrics import semantic_scorer
    from steerswitch.session import Session

    registry = Session.load("tiny-coder").require_registry()
    text = "def test_parse():\n    assert parse('') == []"
    scores = _semantic_scores(registry, ["test_writing", "bug_analysis"], text)
    scorer = semantic_scorer(registry)
    assert scorer is not None
    assert scores == {d: pytest.approx(scorer.score([text], d)[0]) for d in ("test_writing", "bug_analysis")}
    assert scores["test_writing"] > scores["bug_analysis"]  # a test reads as test writing
    assert _semantic_scores(None, ["test_writing"], text) == {}
