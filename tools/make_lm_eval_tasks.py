"""Build the small local lm-eval tasks in tests/lm_eval_tasks/ from the Python standard library.

- python_mc (40 multiple-choice items): which standard-library module defines a function; the
  right module and three others from the same pool. Every (module, function) pair is checked by
  importing it, and no distractor module defines a function of that name.
- python_repl (20 generate-until items): an interactive-session line `>>> EXPR` whose target is
  `repr(eval(EXPR))`, computed here by the interpreter.

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

EXPRESSIONS = [
    "len([1, 2, 3])", "sorted([3, 1, 2])", "'abc'.upper()", "1 + 2 * 3", "list(range(4))", "max(4, 9, 2)",
    "'a,b,c'.split(',')", "str(10 // 3)", "abs(-7)", "'-'.join(['x', 'y'])", "2 ** 8", "min('hello')",
    "bool([])", "'python'[::-1]", "sum([1, 2, 3, 4])", "divmod(17, 5)", "'spam'.replace('a', 'o')",
    "int('42') + 1", "[x * x for x in range(3)]", "type(3.0).__name__",
]


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


def repl_items() -> list[dict[str, str]]:
    return [{"expr": expr, "result": repr(eval(expr))} for expr in EXPRESSIONS]  # noqa: S307 - fixed literals above


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows), encoding="utf-8")


@app.command()
def main(out: Path = typer.Option(OUT, help="directory for the .jsonl data (the YAML files name it)")) -> None:
    out.mkdir(parents=True, exist_ok=True)
    mc, repl = mc_items(), repl_items()
    _write_jsonl(out / "python_mc.jsonl", mc)
    _write_jsonl(out / "python_repl.jsonl", repl)
    print(f"wrote {len(mc)} multiple-choice and {len(repl)} generate-until items to {out}")


if __name__ == "__main__":
    app()
