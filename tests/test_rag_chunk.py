"""Chunking along the Python AST, line windows, and code-aware tokens."""

from __future__ import annotations

from textwrap import dedent

from hypothesis import given, settings
from hypothesis import strategies as st

from steerswitch.rag.chunk import chunk_file, chunk_lines, chunk_python, split_lines
from steerswitch.rag.tokens import code_tokens, path_tokens, split_identifier

SAMPLE = dedent('''\
    """Sample module."""

    import os
    from typing import Any

    LIMIT = 10


    # helper comment belongs to the function below
    def helper(x):
        return x + 1


    @decorator
    class Small:
        """A small class."""

        def method(self):
            return 1


    class Big:
        """A class longer than max_lines."""

        attr = 1

        def first(self):
            a = 1
            b = 2
            return a + b

        def second(self):
            return 2

        class Inner:
            pass


    if __name__ == "__main__":
        helper(1)
    ''')


def _span(chunks, symbol):
    [c] = [c for c in chunks if c.symbol == symbol]
    return c.start_line, c.end_line, c.kind


def test_python_spans_follow_the_ast() -> None:
    lines = SAMPLE.split("\n")
    chunks = chunk_python("pkg/sample.py", SAMPLE, max_lines=12)
    ln = {text: i + 1 for i, text in enumerate(lines)}
    assert _span(chunks, "helper") == (ln["# helper comment belongs to the function below"], ln["    return x + 1"], "function")
    assert _span(chunks, "Small") == (ln["@decorator"], ln["        return 1"], "class")
    assert _span(chunks, "Big.first") == (ln["    def first(self):"], ln["        return a + b"], "method")
    assert _span(chunks, "Big.second")[2] == "method"
    assert _span(chunks, "Big.Inner") == (ln["    class Inner:"], ln["        pass"], "class")
    big_head = [c for c in chunks if c.symbol == "Big" and c.kind == "class"]
    assert big_head and big_head[0].start_line == ln["class Big:"] and "attr = 1" in big_head[0].text
    module = [c for c in chunks if c.kind == "module"]
    assert module[0].start_line == 1 and "import os" in module[0].text and "LIMIT = 10" in module[0].text
    assert "__main__" in module[-1].text
    for c in chunks:  # text is exactly the numbered lines
        assert c.text == "\n".join(lines[c.start_line - 1 : c.end_line])


def test_chunks_do_not_overlap_and_cover_nonblank_lines() -> None:
    chunks = chunk_python("s.py", SAMPLE, max_lines=12)
    covered: list[int] = []
    for c in chunks:
        covered.extend(range(c.start_line, c.end_line + 1))
    assert len(covered) == len(set(covered))
    nonblank = {i + 1 for i, line in enumerate(split_lines(SAMPLE)) if line.strip()}
    assert nonblank <= set(covered)


def test_long_function_split_into_windows_and_small_class_kept_whole() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(50))
    src = f"def long():\n{body}\n    return x0\n"
    chunks = chunk_python("m.py", src, max_lines=20)
    assert [c.symbol for c in chunks] == ["long"] * 3
    assert [(c.start_line, c.end_line) for c in chunks] == [(1, 20), (21, 40), (41, 52)]
    assert len(chunk_python("s.py", SAMPLE, max_lines=200)) == 5  # header, helper, Small, Big, main


def test_unparsable_and_non_python_fall_back_to_windows() -> None:
    broken = "def oops(:\n" + "\n".join(f"line {i}" for i in range(30))
    chunks = chunk_python("b.py", broken, max_lines=10)
    assert {c.kind for c in chunks} == {"window"} and chunks[0].start_line == 1 and chunks[-1].end_line == 31
    md = chunk_file("README.md", "# t\n\n" + "text\n" * 25, max_lines=10)
    assert [c.kind for c in md] == ["window"] * 3 and md[0].text.startswith("# t")
    assert chunk_lines("x.txt", "\n\n \n") == []


def test_content_hash_ignores_line_shift_but_not_content() -> None:
    a = chunk_python("m.py", "def f():\n    return 1\n")[0]
    b = chunk_python("m.py", "import os\n\n\ndef f():\n    return 1\n")[-1]
    c = chunk_python("m.py", "def f():\n    return 2\n")[0]
    assert (a.start_line, b.start_line) == (1, 4)
    assert a.content_hash == b.content_hash != c.content_hash


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["x = 1", "", "    y = 2", "def f():", "    return 3", "class C:", "    pass",
                                 "# c", "\x0c", "if x:"]), max_size=40),
       st.integers(1, 8))
def test_windows_are_exact_for_any_text(lines: list[str], max_lines: int) -> None:
    text = "\n".join(lines)
    for c in chunk_file("f.py", text, max_lines=max_lines):
        assert c.text == "\n".join(split_lines(text)[c.start_line - 1 : c.end_line])
        assert c.n_lines <= max_lines


def test_code_tokens_split_identifiers() -> None:
    toks = code_tokens("def getHTTPResponse(snake_case_name): raise ParseError('L031')")
    for t in ["gethttpresponse", "get", "http", "response", "snake_case_name", "snake", "case", "name",
              "parseerror", "parse", "error", "l031"]:
        assert t in toks
    assert "the" not in code_tokens("the value")  # stop words dropped
    assert split_identifier("HTTPServer_v2") == ["httpserver", "http", "server", "v2"]
    assert path_tokens("src/sqlfluff/rules/L031.py") == ["src", "sqlfluff", "rules", "l031"]
