"""`steerswitch doctor`: versions + the engine self-check, and that it catches a broken engine."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from steerswitch.cli import app
from steerswitch.engine import steering
from steerswitch.engine.selfcheck import all_passed, run_selfcheck


def test_doctor_passes_and_writes_json(tmp_path) -> None:
    out = tmp_path / "doctor.json"
    result = CliRunner().invoke(app, ["doctor", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "transformers" in result.output
    data = json.loads(out.read_text())
    assert data["passed"] is True and {c["name"] for c in data["checks"]} == {"modes", "positions", "per-row batch"}


def test_doctor_reports_positions_that_ignore_the_cache(monkeypatch) -> None:
    """The transformers 5.24 failure: every decoding step seen at offset 0."""

    def blind(args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        return torch.arange(ids.shape[1]).unsqueeze(0), True, "broken"

    monkeypatch.setattr(steering, "token_positions", blind)
    results = run_selfcheck()
    assert not all_passed(results)
    failed = {c.name: c.detail for c in results if not c.ok}
    assert "positions" in failed
    assert "steers nothing" in failed["positions"] or "different tokens" in failed["positions"]
