"""Retrieved code for agents: search a local working tree with `steerswitch.rag.Retriever`.

Invariants:
- The tree is only read (never written, never checked out): files under `root` with a suffix
  in the retriever config, skipping hidden directories, virtual environments and caches, and
  files over the config's size cap or not valid UTF-8.
- The context is plain text, chunks best first, each headed `# path:start-end`, so an agent can
  quote real paths; trimming to a token budget is the prompt builder's job.
"""

from __future__ import annotations

from pathlib import Path

from steerswitch.rag.retriever import Retriever, RetrieverConfig, is_test_path

_SKIP_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "env", "node_modules", "__pycache__", "build", "dist", ".tox", ".mypy_cache", ".pytest_cache"}


def read_tree(root: str | Path, config: RetrieverConfig | None = None) -> dict[str, str]:
    """{relative posix path: text} of the files a retriever with `config` would index."""
    cfg = config or RetrieverConfig()
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"repo {root}: not a directory")
    files: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        if not path.is_file() or path.suffix not in cfg.suffixes:
            continue
        name = rel.as_posix()
        if not cfg.include_tests and is_test_path(name):
            continue
        if path.stat().st_size > cfg.max_file_bytes:
            continue
        try:
            files[name] = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
    return files


def format_chunks(retriever: Retriever, query: str, k: int = 6) -> str:
    """The `k` best chunks for `query`, best first, as `# path:start-end` + code blocks."""
    parts = [f"# {hit.chunk.path}:{hit.chunk.start_line}-{hit.chunk.end_line}\n{hit.chunk.text}" for hit in retriever.search(query, k=k)]
    return "\n\n".join(parts)


def retrieve_context(root: str | Path, query: str, k: int = 6, config: RetrieverConfig | None = None) -> str:
    """BM25 retrieval over a local working tree; "" when it holds no indexable files."""
    files = read_tree(root, config)
    if not files:
        return ""
    retriever = Retriever.from_files(files, config=config or RetrieverConfig(mode="bm25"))
    return format_chunks(retriever, query, k=k)
