"""End to end in a real headless browser: Debian's chromium driven by Playwright, against the arena
served by uvicorn on a free loopback port with the default model.

The default model is the shipped `tiny-coder` when its files are present; until then a tiny
random model saved to disk (with a registry.yaml beside it) stands in, loaded through the same
`build_server` path `steerswitch serve` uses. The test types a prompt, generates two variants,
waits for both columns to fill and get their metric badges, checks the registry and runs views,
and takes a screenshot (copied to $ARENA_SCREENSHOT when set, e.g. docs/arena.png; the README
shows that file); otherwise it stays in the test's temp dir.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from steerswitch.arena.app import build_server
from test_arena_support import arena_engine, arena_registry, one_torch_thread  # noqa: F401 - autouse fixture

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
]
REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "steerswitch" / "assets" / "tiny-coder"
PROMPT = "def read_config(path):\n    "


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str | None, bool]:
    """(model name or directory, registry path or None for the model's own, whether it is the
    shipped default). A shipped model whose registry.yaml has not landed yet gets a stand-in
    registry of random directions of its size."""
    root = tmp_path_factory.mktemp("arena-model")
    if (SHIPPED / "config.json").exists():
        if (SHIPPED / "registry.yaml").exists():
            return "tiny-coder", None, True
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(SHIPPED)
        arena_registry(root, num_layers=config.num_hidden_layers, hidden=config.hidden_size)
        return "tiny-coder", str(root / "registry.yaml"), True
    engine = arena_engine(root)
    out = root / "model"
    engine.model.save_pretrained(out)
    engine.tokenizer.save_pretrained(out)
    arena_registry(out)  # writes out/registry.yaml + out/vectors/, found next to the model like the shipped one
    return str(out), None, False


@pytest.fixture(scope="module")
def base_url(model_dir: tuple[str, str | None, bool]) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # a free port, held from here on (no race with other processes)
    port = sock.getsockname()[1]
    server = build_server(model_dir[0], model_dir[1], host="127.0.0.1", port=port, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the arena server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def page(base_url: str) -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run tools/install_test_browser.sh (the README test command does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        pg.goto(base_url + "/")
        pg.wait_for_selector("body[data-ready=true]", timeout=30_000)
        pg.js_errors = errors  # type: ignore[attr-defined]
        yield pg
        browser.close()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_two_variants_fill_side_by_side(page: Any, model_dir: tuple[str, str | None, bool], tmp_path: Path) -> None:
    boxes = page.locator("#variant-list input[type=checkbox]")
    assert boxes.count() >= 2  # unsteered + one per registry domain
    checked = [b.get_attribute("data-variant") for b in boxes.all() if b.is_checked()]
    assert checked[0] == "unsteered" and len(checked) == 2  # the defaults: unsteered and the first domain
    page.fill("#prompt", PROMPT)
    page.fill("#max-new", "40")
    page.click("#generate")
    # Locator waits, not wait_for_function: the page's CSP forbids the eval that would need.
    page.locator("#columns .column.finished").nth(1).wait_for(timeout=60_000)
    columns = page.locator("#columns .column")
    assert columns.count() == 2
    names = [c.get_attribute("data-variant") for c in columns.all()]
    assert names == checked
    texts = [c.locator(".out").inner_text() for c in columns.all()]
    assert all(t.strip() for t in texts), texts
    for c in columns.all():
        badges = c.locator(".badge").all_inner_texts()
        assert any("tokens" in b for b in badges) and any("rep3" in b for b in badges)
    steered = columns.nth(1)
    assert any("KL bits" in b for b in steered.locator(".badge").all_inner_texts())
    if texts[0] != texts[1]:
        assert steered.locator("mark").count() > 0  # words that differ from the unsteered column
    assert "done" in page.inner_text("#gen-status")
    assert not page.js_errors, page.js_errors

    shot = page.screenshot(full_page=False)
    width, height = png_size(shot)
    assert (width, height) == (1280, 800)
    # Only on request (ARENA_SCREENSHOT=docs/arena.png): a test run never rewrites tracked files.
    target = os.environ.get("ARENA_SCREENSHOT")
    (tmp_path / "arena.png").write_bytes(shot)
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "arena.png", target)


def test_registry_view_draws_heatmap_and_norms(page: Any) -> None:
    page.click("button.tab[data-view=registry]")
    page.wait_for_selector("#heatmap .hm-cell")
    n = page.locator("#geo-layer option").count()
    assert n >= 1
    cells = page.locator("#heatmap .hm-cell")
    domains = page.locator("#heatmap .hm-row").count()
    assert domains >= 1 and cells.count() == domains * domains
    assert page.locator("#norms svg.chart").count() == 2
    assert page.locator("#domains-table tbody tr").count() >= domains


def test_runs_view_shows_the_step_timeline(page: Any) -> None:
    page.click("button.tab[data-view=runs]")
    page.wait_for_selector("#run-scenario option", state="attached")
    page.select_option("#run-scenario", "simple_bug_fix")
    page.fill("#run-max-new", "6")
    page.click("#run-start")
    page.locator("#run-status", has_text=re.compile(r"^finished")).wait_for(timeout=60_000)
    rows = page.locator("#timeline tbody tr.done")
    assert rows.count() == 3  # code_reader, issue_analyst, patch_writer
    first = rows.nth(0).locator("td").all_inner_texts()
    assert first[1] == "code_reader" and "→" in first[4] and 0 <= int(first[5]) <= 6
    page.wait_for_selector("#runs li button")
    assert not page.js_errors, page.js_errors
