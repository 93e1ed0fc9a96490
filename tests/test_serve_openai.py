"""The OpenAI-compatible server (steerswitch.serve_openai) on the shipped tiny-coder model."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Iterator

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from steerswitch.serve_openai import OpenAILimits, create_openai_app  # noqa: E402
from steerswitch.session import Session  # noqa: E402

MESSAGES = [{"role": "user", "content": "Find the bug in parse(text)."}]
PROMPT = "def parse(text):\n    return"


@pytest.fixture(scope="module")
def session() -> Session:
    import torch

    torch.set_num_threads(1)
    return Session.load("tiny-coder")


@pytest.fixture(scope="module")
def client(session: Session) -> Iterator[TestClient]:
    with TestClient(create_openai_app(session, limits=OpenAILimits(max_tokens=32))) as c:
        yield c


def chat(client: TestClient, model: str = "tiny-coder", **body: Any) -> Any:
    return client.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, "temperature": 0, "max_tokens": 12, **body})


def sse(text: str) -> list[Any]:
    """The `data:` payloads of an SSE body, `[DONE]` kept as the string."""
    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_models_lists_base_and_every_domain(client: TestClient, session: Session) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert session.registry is not None
    assert ids == ["tiny-coder"] + [f"tiny-coder:{d}" for d in session.registry.domains]


def test_steered_chat_equals_engine_generate(client: TestClient, session: Session) -> None:
    assert session.registry is not None
    steer = session.registry.steer("bug_analysis", 1.0)
    expected = session.engine.generate([MESSAGES], [steer], max_new_tokens=12, do_sample=False)[0]
    plain = session.engine.generate([MESSAGES], None, max_new_tokens=12, do_sample=False)[0]
    assert expected.text != plain.text  # the steer changes the output, so the comparison below means something
    r = chat(client, "tiny-coder:bug_analysis")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "tiny-coder:bug_analysis"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert choice["finish_reason"] == ("length" if expected.new_tokens == 12 else "stop")
    assert body["usage"] == {"prompt_tokens": expected.prompt_tokens, "completion_tokens": expected.new_tokens,
                             "total_tokens": expected.prompt_tokens + expected.new_tokens}
    unsteered = chat(client).json()["choices"][0]["message"]["content"]
    assert unsteered == plain.text


def test_suffix_and_body_field_steer_alike(client: TestClient, session: Session) -> None:
    by_name = chat(client, "tiny-coder:bug_analysis@0.5").json()["choices"][0]["message"]["content"]
    by_field = chat(client, steer={"domain": "bug_analysis", "scale": 0.5}).json()["choices"][0]["message"]["content"]
    assert by_name == by_field
    assert session.registry is not None
    half = session.engine.generate([MESSAGES], [session.registry.steer("bug_analysis", 0.5)], max_new_tokens=12)[0].text
    assert by_name == half
    combined = chat(client, "tiny-coder:bug_analysis+test_writing").json()["choices"][0]["message"]["content"]
    both = [session.registry.steer("bug_analysis"), session.registry.steer("test_writing")]
    assert combined == session.engine.generate([MESSAGES], both, max_new_tokens=12)[0].text


def test_completion_with_stop_and_seed(client: TestClient, session: Session) -> None:
    plain = session.engine.generate([PROMPT], None, max_new_tokens=12, chat=False)[0].text or ""
    r = client.post("/v1/completions", json={"model": "tiny-coder", "prompt": PROMPT, "temperature": 0, "max_tokens": 12})
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == plain
    assert body["usage"]["prompt_tokens"] == session.count_tokens(PROMPT, chat=False)
    stop = plain.strip()[:3]
    assert stop
    r = client.post("/v1/completions", json={"model": "tiny-coder", "prompt": PROMPT, "temperature": 0, "max_tokens": 12, "stop": [stop]})
    choice = r.json()["choices"][0]
    assert choice["text"] == plain[:plain.find(stop)]
    assert choice["finish_reason"] == "stop"
    sampled = [client.post("/v1/completions", json={"model": "tiny-coder", "prompt": PROMPT, "temperature": 1.0, "seed": 7, "max_tokens": 12}).json()
               ["choices"][0]["text"] for _ in range(2)]
    assert sampled[0] == sampled[1]  # same seed, same sample


@pytest.mark.parametrize(("model", "body", "status", "param", "code"), [
    ("tiny-coder:nope", {}, 400, "model", "unknown_domain"),
    ("tiny-coder", {"steer": {"domain": "nope"}}, 400, "steer", "unknown_domain"),
    ("tiny-coder:bug_analysis@x", {}, 400, "model", None),
    ("tiny-coder:bug_analysis@inf", {}, 400, "model", "invalid_scale"),
    ("tiny-coder", {"steer": {"domain": "bug_analysis", "layer": 999}}, 400, "steer", "invalid_layer"),
    ("tiny-coder", {"n": 2}, 400, "n", "unsupported_value"),
    ("tiny-coder", {"max_tokens": 10_000}, 400, "max_tokens", None),
    ("tiny-coder", {"temperature": "hot"}, 400, "temperature", "invalid_request"),
    ("tiny-coder:bug_analysis", {"steer": {"domain": "bug_analysis"}}, 400, "steer", None),
    ("gpt-4o", {}, 404, "model", "model_not_found"),
])
def test_errors_have_openai_shape(client: TestClient, model: str, body: dict[str, Any], status: int, param: str, code: str | None) -> None:
    r = chat(client, model, **body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["code"] == code
    assert error["message"]


def test_bad_json_is_400(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_api_key_enforced(session: Session) -> None:
    with TestClient(create_openai_app(session, api_key="sekret")) as c:
        assert c.get("/v1/models").status_code == 401
        wrong = c.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        assert c.post("/v1/completions", json={"model": "tiny-coder", "prompt": "x"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer sekret"}).status_code == 200


@pytest.mark.parametrize("route", ["chat", "completion"])
def test_stream_concatenates_to_non_streaming(client: TestClient, route: str) -> None:
    if route == "chat":
        path, body = "/v1/chat/completions", {"messages": MESSAGES}
    else:
        path, body = "/v1/completions", {"prompt": PROMPT}
    body = {**body, "model": "tiny-coder:test_writing", "temperature": 0, "max_tokens": 12}
    whole = client.post(path, json=body).json()
    r = client.post(path, json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    if route == "chat":
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert text == whole["choices"][0]["message"]["content"]
    else:
        text = "".join(c["choices"][0]["text"] for c in chunks)
        assert text == whole["choices"][0]["text"]
    assert len(chunks) > 3  # streamed token by token, not in one piece
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert [e["usage"] for e in events[:-1] if not e["choices"]] == [whole["usage"]]


def test_host_guard_and_body_limit(session: Session) -> None:
    with TestClient(create_openai_app(session, allowed_hosts=["127.0.0.1"], max_body_bytes=200), base_url="http://127.0.0.1") as c:
        assert c.get("/v1/models").status_code == 200
        assert c.get("/v1/models", headers={"host": "evil.example"}).status_code == 400
        big = c.post("/v1/completions", json={"model": "tiny-coder", "prompt": "x" * 1000})
        assert big.status_code == 413


def _free_port() -> int:
    from steerswitch.benchmarks.serve_bench import free_port

    return free_port()


def test_openai_client_against_uvicorn(session: Session) -> None:
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from steerswitch.serve_openai import build_server

    port = _free_port()
    server = build_server(session, port=port, api_key="k", log_level="warning", limits=OpenAILimits(max_tokens=32))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        assert "tiny-coder:bug_analysis" in [m.id for m in client.models.list()]
        reply = client.chat.completions.create(model="tiny-coder:bug_analysis", messages=MESSAGES, temperature=0, max_tokens=12)
        assert session.registry is not None
        expected = session.engine.generate([MESSAGES], [session.registry.steer("bug_analysis")], max_new_tokens=12)[0]
        assert reply.choices[0].message.content == expected.text
        assert reply.usage is not None and reply.usage.completion_tokens == expected.new_tokens
        streamed = client.chat.completions.create(model="tiny-coder:bug_analysis", messages=MESSAGES, temperature=0,
                                                  max_tokens=12, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected.text
        steered = client.completions.create(model="tiny-coder", prompt=PROMPT, temperature=0, max_tokens=12,
                                            extra_body={"steer": {"domain": "bug_analysis"}})
        named = client.completions.create(model="tiny-coder:bug_analysis", prompt=PROMPT, temperature=0, max_tokens=12)
        assert steered.choices[0].text == named.choices[0].text
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="tiny-coder:nope", messages=MESSAGES, max_tokens=4)
        assert bad.value.status_code == 400
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize("batching", ["continuous", "window"])
def test_concurrent_requests_batch_and_match_alone(session: Session, batching: str) -> None:
    """Requests in flight together share decode forwards, each row giving exactly the tokens it gives alone."""
    import asyncio

    import httpx

    assert session.registry is not None
    app = create_openai_app(session, limits=OpenAILimits(max_tokens=32, max_batch=8, batch_window_ms=2000, batching=batching))
    assert app.state.openai.batcher.kind == batching
    asks: list[tuple[str, list[Any], int]] = [
        ("tiny-coder:bug_analysis", [session.registry.steer("bug_analysis")], 12),
        ("tiny-coder", [], 12),
        ("tiny-coder:test_writing@0.5", [session.registry.steer("test_writing", 0.5)], 6),
        ("tiny-coder:bug_analysis+code_reading", [session.registry.steer("bug_analysis"), session.registry.steer("code_reading")], 9),
    ]

    async def ask(client: httpx.AsyncClient, model: str, max_tokens: int) -> Any:
        r = await client.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, "temperature": 0, "max_tokens": max_tokens})
        assert r.status_code == 200, r.text
        return r.json()

    async def main() -> list[Any]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await asyncio.gather(*(ask(client, m, n) for m, _, n in asks))

    replies = asyncio.run(main())
    batcher = app.state.openai.batcher
    if batching == "window":
        assert batcher.batches == [len(asks)]  # one batch, all rows
    else:
        assert max(batcher.decoder.widths) == len(asks)  # every row in one decode forward
        assert batcher.decoder.live == 0
    assert batcher.pending == 0  # an answered request is no longer pending
    for (_, steers, n), reply in zip(asks, replies):
        alone = session.engine.generate([MESSAGES], steers or None, max_new_tokens=n)[0]
        assert reply["choices"][0]["message"]["content"] == alone.text
        assert reply["usage"]["completion_tokens"] == alone.new_tokens
    texts = [r["choices"][0]["message"]["content"] for r in replies]
    assert len(set(texts)) == len(texts)  # the rows really were steered differently


@pytest.mark.parametrize("batching", ["continuous", "window"])
def test_full_queue_is_429_with_retry_after(session: Session, batching: str) -> None:
    import asyncio

    import httpx

    # max_batch 2: the first request waits out its batch window, holding the one pending place.
    app = create_openai_app(session, limits=OpenAILimits(max_tokens=32, max_pending=1, max_batch=2, batch_window_ms=1000,
                                                         batching=batching))

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            body = {"model": "tiny-coder", "prompt": PROMPT, "temperature": 0, "max_tokens": 4}
            first = asyncio.create_task(client.post("/v1/completions", json=body))
            await asyncio.sleep(0.2)  # the first waits in its batch window
            second = await client.post("/v1/completions", json=body)
            return [await first, second]

    first, second = asyncio.run(main())
    assert first.status_code == 200
    assert second.status_code == 429
    assert second.headers["retry-after"] == "1"
    assert second.json()["error"]["code"] == "queue_full"


def test_bench_serve_measures_both_modes_on_the_same_requests(tmp_path: Any) -> None:
    pytest.importorskip("uvicorn")
    from steerswitch.cli.main import main

    out = tmp_path / "serve.json"
    assert main(["bench", "serve", "--clients", "3", "--requests", "6", "--max-tokens", "4", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    one, many = result["one_at_a_time"], result["batched"]
    assert one["n"] == many["n"] == 6
    assert one["tokens"] == many["tokens"] > 0  # greedy: the same completions either way
    assert result["batching"] == "continuous"
    assert result["throughput_ratio"] == pytest.approx(many["tokens_per_s"] / one["tokens_per_s"])
    assert 0 < many["ttft_p50"] <= many["latency_p95"]
    assert len(result["batched_requests"]) == 6


def test_serve_and_bench_name_a_bad_model_or_registry(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from steerswitch.cli.main import main

    cases = [
        (["serve-openai", "--registry", str(tmp_path / "none.yaml")], "--registry"),
        (["bench", "serve", "--registry", str(tmp_path / "none.yaml")], "--registry"),
        (["serve-openai", "--model", str(tmp_path / "no-model")], "--model"),
        (["bench", "serve", "--model", str(tmp_path / "no-model")], "--model"),
    ]
    for args, flag in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert flag in err and err.count("\n") <= 2, err


def test_bench_clients_all_start_before_timing() -> None:
    """`bench serve` times only after every client process is up (a process still importing competes
    with the server for the CPU and inflated TTFT p95 3-6x)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from steerswitch.benchmarks.serve_bench import start_all

    with ProcessPoolExecutor(max_workers=3, mp_context=multiprocessing.get_context("spawn")) as pool:
        pids = start_all(pool, 3)
        assert len(pids) == 3
        assert len(pool._processes) == 3  # noqa: SLF001 - the pool spawned no more than it was asked for

