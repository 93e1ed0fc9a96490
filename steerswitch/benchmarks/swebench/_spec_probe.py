"""Read SWE-bench 4.x environment specs for a list of instances; run as a script, prints JSON.

swebench 5.x no longer ships ``MAP_REPO_VERSION_TO_SPECS`` (its datasets carry a Docker image and
an eval script per instance instead), so the classic 12-field datasets need the 4.x tables. This
script runs in its own process so a 4.x copy (``pip install --no-deps --target DIR swebench==4.1.0``)
never mixes with the installed 5.x package: argv[1] is that DIR, or ``-`` for the importable
``swebench``. Only ``swebench.harness`` submodules are imported (the package ``__init__`` pulls in
Docker); the requirements lookup is the official ``get_requirements`` with its GitHub download
served from the local clone named in the input (no network).

stdin: {"git_dirs": {repo: git_dir}, "instances": [SWE-bench instance dicts]}
stdout: {"swebench_version": str, "instances": {instance_id: {...} | {"error": str}}}
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any


def _stub_packages(root: str) -> None:
    for name in ("swebench", "swebench.harness"):
        mod = types.ModuleType(name)
        mod.__path__ = [str(Path(root, *name.split(".")))]
        sys.modules[name] = mod
    sys.path.insert(0, root)


class _Response:
    def __init__(self, status_code: int, text: str) -> None:
        self.status_code = status_code
        self.text = text


def main() -> None:
    root = sys.argv[1]
    payload = json.load(sys.stdin)
    version = "unknown"
    if root != "-":
        _stub_packages(root)
        init = Path(root, "swebench", "__init__.py")
        for line in init.read_text().splitlines():
            if line.startswith("__version__"):
                version = line.split("=", 1)[1].strip().strip("\"'")
    else:
        import importlib.metadata

        version = importlib.metadata.version("swebench")
    try:
        from swebench.harness import constants as C  # type: ignore[import-not-found]
        from swebench.harness.log_parsers import MAP_REPO_TO_PARSER  # type: ignore[import-not-found]
        from swebench.harness.test_spec import python as tsp  # type: ignore[import-not-found]
    except ImportError as e:
        json.dump({"error": f"swebench {version} at {root}: no 4.x spec tables ({e})"}, sys.stdout)
        return

    git_dirs: dict[str, str] = payload["git_dirs"]
    prefix = C.SWE_BENCH_URL_RAW

    def fake_get(url: str, headers: Any = None, **_: Any) -> _Response:
        # URL = SWE_BENCH_URL_RAW + owner/name/commit/path; served from the local clone
        rest = url[len(prefix):] if url.startswith(prefix) else ""
        parts = rest.split("/")
        if len(parts) < 4:
            return _Response(404, "")
        repo, commit, path = "/".join(parts[:2]), parts[2], "/".join(parts[3:])
        git_dir = git_dirs.get(repo)
        if git_dir is None:
            return _Response(404, "")
        proc = subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{path}"], capture_output=True)
        if proc.returncode != 0:
            return _Response(404, "")
        return _Response(200, proc.stdout.decode(errors="replace"))

    tsp.requests = types.SimpleNamespace(get=fake_get)
    out: dict[str, Any] = {}
    for inst in payload["instances"]:
        iid = inst["instance_id"]
        repo, ver = inst["repo"], inst["version"]
        try:
            spec = C.MAP_REPO_VERSION_TO_SPECS.get(repo, {}).get(ver)
            if spec is None:
                out[iid] = {"error": f"swebench {version} has no spec for {repo} version {ver}"}
                continue
            parser = MAP_REPO_TO_PARSER.get(repo)
            rec: dict[str, Any] = {
                "spec": json.loads(json.dumps(spec, default=str)),
                "log_parser": getattr(parser, "__name__", None),
                "directives": tsp.get_test_directives(inst),
                "repo_install": getattr(C, "MAP_REPO_TO_INSTALL", {}).get(repo),
                "requirements": None,
                "environment_yml": None,
            }
            cached_yml = getattr(tsp, "load_cached_environment_yml", None)
            if cached_yml is not None and cached_yml(iid):
                rec["environment_yml"] = "cached environment.yml (conda)"
            pkgs = spec.get("packages", "")
            if pkgs == "requirements.txt":
                rec["requirements"] = tsp.get_requirements(inst)
            out[iid] = rec
        except Exception as e:  # one bad instance must not hide the others' specs
            out[iid] = {"error": f"{type(e).__name__}: {e}"}
    json.dump({"swebench_version": version, "instances": out}, sys.stdout)


if __name__ == "__main__":
    main()
