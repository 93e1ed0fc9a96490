"""The arena under hostile requests (issue 22, items 5-8): body cap before parsing, no echo of the
input in a 422, 422 (not 500) for NaN / infinities / lone surrogates, a usable temperature
minimum, and bracketed IPv6 Host headers."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from steerswitch.arena.app import create_app, loopback_hosts
from steerswitch.webguard import host_of
from test_arena_support import arena_engine, arena_registry, one_torch_thread  # noqa: F401 - autouse fixture

OK = {"prompt": "def f():", "variants": [{"type": "unsteered"}], "settings": {"max_new_tokens": 2}}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("arena")
    app = create_app(arena_engine(root), arena_registry(root / "registry"), max_body_bytes=50_000)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _post(client: TestClient, raw: str | bytes) -> Any:
    return client.post("/api/generate", content=raw, headers={"content-type": "application/json"})


def test_large_body_is_refused_unread(client: TestClient) -> None:
    body = json.dumps({"prompt": "x", "variants": [0] * 200_000})  # ~600 KB, over the 50 KB cap
    t0 = time.perf_counter()
    r = _post(client, body)
    assert r.status_code == 413 and "50,000 bytes" in r.json()["detail"]
    assert len(r.content) < 200  # never echoed
    assert time.perf_counter() - t0 < 5
    # chunked (no Content-Length): counted while reading
    r = client.post("/api/generate", content=iter([body[:30_000].encode(), body[30_000:].encode()]),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.get("/api/health").status_code == 200


def test_validation_errors_do_not_echo_input(client: TestClient) -> None:
    big = "y" * 40_000
    r = client.post("/api/generate", json={**OK, "unknown_field": big})
    assert r.status_code == 422 and big not in r.text and len(r.content) < 2_000
    assert any(e["loc"][-1] == "unknown_field" for e in r.json()["detail"])


@pytest.mark.parametrize("raw", [
    '{"prompt": "x", "variants": [{"type": "unsteered"}], "settings": {"temperature": NaN}}',
    '{"prompt": "x", "variants": [{"type": "unsteered"}], "settings": {"top_p": Infinity}}',
    '{"prompt": "x", "variants": [{"type": "unsteered"}], "settings": {"temperature": 1e400}}',
    '{"prompt": "x", "variants": [{"type": "explicit", "domain": "bug_analysis", "layer": 1, "alpha": -Infinity}]}',
    '{"prompt": "x\\ud800", "variants": [{"type": "unsteered"}]}',
    '{"prompt": "x", "variants": [{"type": "unsteered", "name": "\\udfff"}]}',
    '{"prompt": "x", "variants": [{"type": "unsteered"}], "\\ud800": 1}',
])
def test_non_finite_numbers_and_lone_surrogates_are_422(client: TestClient, raw: str) -> None:
    r = _post(client, raw)
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], list)


def test_tiny_temperature_is_refused_before_the_stream(client: TestClient) -> None:
    r = client.post("/api/generate", json={**OK, "settings": {"max_new_tokens": 2, "do_sample": True, "temperature": 1e-45}})
    assert r.status_code == 422 and any("temperature" in e["loc"] for e in r.json()["detail"])
    r = client.post("/api/generate", json={**OK, "settings": {"max_new_tokens": 2, "do_sample": True, "temperature": 0.01, "seed": 1}})
    assert r.status_code == 200 and "event: error" not in r.text


@pytest.mark.parametrize(("header", "host"), [("[::1]:8000", "::1"), ("[::1]", "::1"), ("127.0.0.1:80", "127.0.0.1"),
                                              ("localhost", "localhost"), ("::1", "::1"), ("[fe80::1%25eth0]:1", "fe80::1%25eth0")])
def test_host_of_parses_bracketed_ipv6(header: str, host: str) -> None:
    assert host_of(header) == host


def test_ipv6_loopback_server_accepts_its_own_url(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("arena6")
    app = create_app(arena_engine(root), arena_registry(root / "registry"), allowed_hosts=loopback_hosts("::1"))
    with TestClient(app, base_url="http://[::1]:8123") as c:
        assert c.get("/api/health").status_code == 200
        assert c.get("/api/health", headers={"Host": "[::1]:8123"}).status_code == 200
        assert c.get("/api/health", headers={"Host": "[::2]:8123"}).status_code == 400
        assert c.get("/api/health", headers={"Host": "evil.example"}).status_code == 400
