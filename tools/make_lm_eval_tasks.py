"""Build the small local lm-eval tasks in tests/lm_eval_tasks/ from the Python standard library.

- python_mc (40 multiple-choice items): which standard-library module defines a function; the
  right module and three others from the same pool. Every (module, function) pair is checked by
  importing it, and no distractor module defines a function of that name.
- python_init (20 generate-until items): a class whose `__init__` stores its parameters, cut
  after `self.` on the last one; the target is `NAME = NAME`. The parameter names are those of
  real standard-library `__init__` signatures (read with inspect).

    python tools/make_lm_eval_tasks.py [--out tests/lm_eval_tasks]

Deterministic (seeded), so re-running reproduces the committed files.
"""

from __future__ import annotations

import importlib
import json
import random
from pathlib import Path

import typer

app = typer.Typer(add_completion=False)
OUT = Path(__file__).resolve().parents[1] / "tests" / "lm_eval_tasks"

FUNCTIONS = [
    ("json", "dumps"), ("json", "loads"), ("os", "listdir"), ("os", "getcwd"), ("re", "findall"), ("re", "sub"),
    ("math", "sqrt"), ("math", "gcd"), ("shutil", "copyfile"), ("shutil", "rmtree"), ("itertools", "chain"),
    ("itertools", "permutations"), ("functools", "reduce"), ("functools", "lru_cache"), ("collections", "namedtuple"),
    ("random", "shuffle"), ("random", "randint"), ("textwrap", "dedent"), ("textwrap", "wrap"), ("glob", "glob"),
    ("heapq", "heappush"), ("heapq", "nlargest"), ("bisect", "insort"), ("copy", "deepcopy"), ("inspect", "getsource"),
    ("time", "sleep"), ("time", "perf_counter"), ("difflib", "unified_diff"), ("fnmatch", "fnmatch"),
    ("statistics", "median"), ("statistics", "stdev"), ("pprint", "pformat"), ("hashlib", "sha256"),
    ("base64", "b64encode"), ("tempfile", "mkdtemp"), ("subprocess", "check_output"), ("subprocess", "run"),
    ("csv", "writer"), ("string", "capwords"), ("operator", "itemgetter"),
]
MODULES = sorted({module for module, _ in FUNCTIONS})

INIT_MODULES = [
    "argparse", "collections", "configparser", "csv", "dataclasses", "datetime", "decimal", "difflib", "email.message",
    "fractions", "ftplib", "gzip", "html.parser", "http.client", "json", "logging", "optparse", "pathlib", "pprint",
    "queue", "shlex", "smtplib", "string", "tarfile", "textwrap", "threading", "traceback", "urllib.request",
    "zipfile", "calendar", "cmd", "code", "codecs", "imaplib", "inspect", "mailbox", "poplib", "sched",
    "socketserver", "subprocess", "tempfile", "timeit", "trace", "unittest.case", "wave", "xml.dom.minidom",
]
N_INIT = 20


def mc_items(seed: int = 0) -> list[dict[str, object]]:
    rng = random.Random(seed)
    items = []
    for module, name in FUNCTIONS:
        if not callable(getattr(importlib.import_module(module), name, None)):
            raise SystemExit(f"{module}.{name} is not a function of this Python")
        others = [m for m in MODULES if m != module and not hasattr(importlib.import_module(m), name)]
        choices = rng.sample(others, 3) + [module]
        rng.shuffle(choices)
        items.append({
            "question": f"# {name}() is defined in the standard library\nfrom",
            "choices": [f" {m} import {name}" for m in choices],
            "answer": choices.index(module),
            "module": module,
            "function": name,
        })
    return items


def init_items() -> list[dict[str, str]]:
    """One item per standard-library class (first N_INIT in module order) whose Python __init__
    takes 2-5 plain named parameters, at most two per module."""
    import inspect

    items: list[dict[str, str]] = []
    seen: set[tuple[str, ...]] = set()
    for module_name in INIT_MODULES:
        module = importlib.import_module(module_name)
        taken = 0
        for cls_name, cls in sorted(vars(module).items()):
            if not inspect.isclass(cls) or cls.__module__ != module.__name__ or cls_name.startswith("_"):
                continue
            init = cls.__dict__.get("__init__")
            if not inspect.isfunction(init):
                continue
            params = list(inspect.signature(init).parameters.values())[1:]
            if not 2 <= len(params) <= 5 or any(p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params):
                continue
            names = tuple(p.name for p in params)
            if names in seen:
                continue
            seen.add(names)
            body = "".join(f"        self.{n} = {n}\n" for n in names[:-1])
            items.append({
                "prompt": f"class {cls_name}:\n    def __init__(self, {', '.join(names)}):\n{body}        self.",
                "target": f"{names[-1]} = {names[-1]}",
                "source": f"{module_name}.{cls_name}",
            })
            taken += 1
            if taken == 2 or len(items) == N_INIT:  # at most two per module keeps the set varied
                break
        if len(items) == N_INIT:
            break
    if len(items) < N_INIT:
        raise SystemExit(f"only {len(items)} classes qualify on this Python")
    return items


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows), encoding="utf-8")


@app.command()
def main(out: Path = typer.Option(OUT, help="directory for the .jsonl data (the YAML files name it)")) -> None:
    out.mkdir(parents=True, exist_ok=True)
    mc, init = mc_items(), init_items()
    _write_jsonl(out / "python_mc.jsonl", mc)
    _write_jsonl(out / "python_init.jsonl", init)
    print(f"wrote {len(mc)} multiple-choice and {len(init)} generate-until items to {out}")


if __name__ == "__main__":
    app()
