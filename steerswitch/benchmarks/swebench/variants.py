"""The variants of a SWE-bench run: orchestrated (the LangGraph agents) or direct (one prompt).

- ``baseline`` | ``static`` | ``dynamic`` | ``additive``: the orchestrator's variants; each
  instance runs through ``run_task`` with the ``swebench`` scenario (read -> analyse -> diff).
- ``direct:baseline``: one unsteered prompt, one generation (``DirectGenerator``).
- ``direct:DOMAIN`` / ``direct:DOMAIN@SCALE``: the same prompt, the registry's DOMAIN vector held
  for the whole generation at SCALE x its alpha (``@0`` is the alpha = 0 control).

A bare domain name (``bug_analysis``) is refused: it used to mean a direct variant and would now
silently be read as something else. Directory names replace ``:`` with ``-`` (``direct-baseline``),
so every file system can hold them; records keep the variant as written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from steerswitch.benchmarks.swebench.pipeline import variant_dir
from steerswitch.orchestrator.state import VARIANTS

__all__ = ["SwebenchVariant", "parse_variant", "parse_variants", "variant_dir", "VariantError"]

_DOMAIN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


class VariantError(ValueError):
    """A variant name that is not one of the accepted forms (the message names it and the forms)."""


@dataclass(frozen=True)
class SwebenchVariant:
    name: str  # as written: "dynamic", "direct:bug_analysis@0.5"
    kind: Literal["orchestrated", "direct"]
    target: str  # orchestrator variant, or "baseline" / a registry domain for direct
    scale: float = 1.0

    @property
    def steers(self) -> bool:
        return self.target != "baseline"

    @property
    def dir_name(self) -> str:
        return variant_dir(self.name)


def _forms() -> str:
    return f"{' | '.join(VARIANTS)} | direct:baseline | direct:DOMAIN[@SCALE]"


def parse_variant(variant: str) -> SwebenchVariant:
    """``"dynamic"`` -> orchestrated; ``"direct:bug_analysis@0.5"`` -> direct, domain, scale 0.5."""
    v = variant.strip()
    if v in VARIANTS:
        return SwebenchVariant(v, "orchestrated", v)
    kind, sep, rest = v.partition(":")
    if not sep:
        raise VariantError(
            f"variant {variant!r}: not an orchestrator variant; a single-domain prompt is now written "
            f"'direct:{v}' (accepted: {_forms()})")
    if kind != "direct":
        raise VariantError(f"variant {variant!r}: unknown kind {kind!r} (accepted: {_forms()})")
    target, at, scale_text = rest.partition("@")
    if not target or not _DOMAIN_RE.match(target):
        raise VariantError(f"variant {variant!r}: 'direct:' must be followed by 'baseline' or a registry domain")
    if target == "baseline":
        if at:
            raise VariantError(f"variant {variant!r}: direct:baseline takes no scale (it is unsteered)")
        return SwebenchVariant(v, "direct", "baseline")
    scale = 1.0
    if at:
        try:
            scale = float(scale_text)
        except ValueError:
            raise VariantError(f"variant {variant!r}: the part after '@' must be a number (a scale of the domain's alpha)") from None
    return SwebenchVariant(v, "direct", target, scale)


def parse_variants(text: str | Sequence[str]) -> list[SwebenchVariant]:
    """A comma list (or a list) of variants, each parsed; duplicates (also by directory name) refused."""
    names = [x.strip() for x in text.split(",")] if isinstance(text, str) else [x.strip() for x in text]
    names = [n for n in names if n]
    if not names:
        raise VariantError("give at least one variant")
    out = [parse_variant(n) for n in names]
    dirs = [v.dir_name for v in out]
    dup = sorted({d for d in dirs if dirs.count(d) > 1})
    if dup:
        raise VariantError(f"variants {dup} are given twice")
    return out
