"""The SWE-bench patch pipeline and its self-checks.

Modules (import them directly; this package imports nothing, so the patch validator stays light):
- ``instances``: load and select official-schema instances (JSON, JSONL, parquet, saved datasets).
- ``patch``: the project's one patch validator (extract, repair, validate -> ``PatchCheck``).
- ``pipeline``: retrieve -> generate -> extract -> validate -> record, resumable, executor seam.
- ``report``: per-variant metrics with standard errors, rich table, JSON, the official harness.
- ``runner``: what the ``steerswitch swebench`` commands do (retrieve recall, gold-patch check).
"""
