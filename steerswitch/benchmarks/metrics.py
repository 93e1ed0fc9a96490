"""Steering metrics: how much a steer changed the output, how far it moved the model, and what it
cost in fluency. Every function here is pure (no model calls) except the optional `HFJudge`.

Invariants:
- KL divergences are computed from log-probabilities (log-softmax outputs), never as the log of a
  softmax, and are reported in bits. KL(P || Q) with P = steered, Q = unsteered, at the same
  prefix: sum_v P(v) (log P(v) - log Q(v)) / ln 2; terms with P(v) = 0 contribute 0; the result
  is clamped at 0 (float noise can make identical rows a hair negative).
- surprise = mean negative log-likelihood, in bits per token, of the steered text under the
  unsteered model (lower = the unsteered model finds the text ordinary).
- rep-n = fraction of the n-gram positions of a sequence whose n-gram occurs more than once in
  that sequence ("a b c a b c" has rep2 = 4/5: only "c a" is unique). rep3 is the repetition
  score of the Eiffel Tower Llama evaluation. distinct-n = unique n-grams / n-grams.
  Sequences too short to hold an n-gram score 0 (nothing repeats) and 1 (nothing is duplicated).
- Keyword hits match whole sub-words: text is split into identifier parts (snake_case and
  camelCase are split, letters and digits separate), so "test" matches `test_parse` and
  `run_test` but "orm" never matches "form" and "test" never matches "pytest". A keyword of
  several parts ("off by one", "assertEqual") matches that run of consecutive parts. Matching is
  case-sensitive by default (the domain keyword lists spell out the cases they mean: "None",
  "Error" and "error"); `keyword_count` counts match positions, so variants never double-count.
- Semantic domain score (`SemanticScorer`): embed the output with a sentence encoder (the offline
  all-MiniLM-L6-v2 of the `embeddings` extra; `HashingEncoder` as the deterministic fallback) and
  take its mean cosine to the domain's reference prompts minus its mean cosine to the neutral
  reference prompts (both the `extract` split of the shipped prompt sets: held out from every
  prompt that is steered and scored, which come from the neutral `eval` split). Positive = closer to
  the domain than to neutral text. An empty output scores 0. Steered and unsteered outputs are
  scored by the same scorer; keyword hits stay a second, named metric.
- Fluency bounds (`FluencyBounds`): a steered result is fluent when its mean rep3 <= the
  unsteered rep3 + 0.1, its mean surprise <= the unsteered surprise + 1.5 bits/token and its share
  of empty outputs <= the unsteered share + 0.1 (the unsteered values on the same prompts; an empty
  output has rep3 0 and no surprise, so the first two bounds alone would call silence fluent);
  otherwise it is `degenerate`.
- Standard errors use the sample standard deviation (ddof = 1) / sqrt(n); n < 2 gives se = nan.
  Bootstrap intervals are percentile intervals from a seeded generator, so they are reproducible.
- The harmonic-mean combiner gives 0 when any score is 0 (a fluent answer that ignores the
  concept scores 0, as in AxBench).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, Literal, Mapping, Protocol, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import numpy as np

LN2 = math.log(2.0)

# ---------------------------------------------------------------------------------------------
# Distribution metrics
# ---------------------------------------------------------------------------------------------


def kl_bits(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) in bits over the last dimension, from log-probabilities (shape (..., vocab)); float64."""
    if p_logprobs.shape != q_logprobs.shape:
        raise ValueError(f"kl_bits: shapes differ: P {tuple(p_logprobs.shape)} vs Q {tuple(q_logprobs.shape)}")
    p_log = p_logprobs.double()
    q_log = q_logprobs.double()
    p = p_log.exp()
    # Where P is 0 the term is 0 even if log Q is -inf (0 * inf would give nan).
    terms = torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p))
    return (terms.sum(-1) / LN2).clamp_min(0.0)  # float64


class KLStats(BaseModel):
    """KL(steered || unsteered) in bits on the first generated token and averaged over positions."""

    first: float | None
    mean: float | None
    per_position: list[float] = Field(default_factory=list)


def kl_stats(steered: torch.Tensor, unsteered: torch.Tensor, keep_positions: bool = False) -> KLStats:
    """From (T, vocab) log-prob rows at the same prefixes; T = 0 gives None (no generated token)."""
    if steered.shape[0] == 0:
        return KLStats(first=None, mean=None)
    per = kl_bits(steered, unsteered).double()
    return KLStats(first=float(per[0]), mean=float(per.mean()), per_position=[float(x) for x in per] if keep_positions else [])


def surprise_bits(token_logprobs: torch.Tensor | Sequence[float]) -> float | None:
    """Mean negative log-likelihood in bits per token (input: natural-log probabilities of the
    tokens actually generated, under the reference model). Empty input gives None."""
    values = torch.as_tensor(token_logprobs, dtype=torch.float64).reshape(-1)
    if values.numel() == 0:
        return None
    return float(-values.mean() / LN2)


# ---------------------------------------------------------------------------------------------
# Sequence metrics
# ---------------------------------------------------------------------------------------------


def ngrams(seq: Sequence[Hashable], n: int) -> list[tuple[Hashable, ...]]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seq = list(seq)
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def rep_n(seq: Sequence[Hashable], n: int = 3) -> float:
    """Fraction of n-gram positions whose n-gram occurs more than once in `seq` (0 if none)."""
    grams = ngrams(seq, n)
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(1 for g in grams if counts[g] > 1) / len(grams)


def distinct_n(seq: Sequence[Hashable], n: int = 2) -> float:
    """Unique n-grams / n-grams (1.0 when there is no n-gram)."""
    grams = ngrams(seq, n)
    if not grams:
        return 1.0
    return len(set(grams)) / len(grams)


def changed(output: Sequence[Hashable] | str, control: Sequence[Hashable] | str) -> bool:
    """Whether a steered output differs from the alpha = 0 output for the same prompt."""
    return list(output) != list(control)


def change_rate(outputs: Sequence[Sequence[Hashable] | str], controls: Sequence[Sequence[Hashable] | str]) -> float:
    """Fraction of prompts whose output differs from the alpha = 0 output (paired by index)."""
    if len(outputs) != len(controls):
        raise ValueError(f"change_rate: {len(outputs)} outputs but {len(controls)} control outputs")
    if not outputs:
        return float("nan")
    return sum(changed(o, c) for o, c in zip(outputs, controls)) / len(outputs)


def first_divergence(output: Sequence[Hashable], control: Sequence[Hashable]) -> int | None:
    """Index of the first token where `output` departs from `control` (None if identical)."""
    a, b = list(output), list(control)
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def sampling_diversity(samples: Sequence[Sequence[Hashable] | str]) -> float:
    """Unique responses among k samples for one prompt, as a fraction of k (1/k .. 1)."""
    if not samples:
        raise ValueError("sampling_diversity needs at least one sample")
    return len({tuple(s) if not isinstance(s, str) else s for s in samples}) / len(samples)


# ---------------------------------------------------------------------------------------------
# Keywords
# ---------------------------------------------------------------------------------------------

# Identifier parts: "HTTPServer" -> HTTP, Server; "parse_url2" -> parse, url, 2; "assertEqual" -> assert, Equal.
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def subwords(text: str, case_sensitive: bool = True) -> list[str]:
    """Identifier parts of `text` (the unit keyword matching works on)."""
    parts = _PART.findall(text)
    return parts if case_sensitive else [p.lower() for p in parts]


def _match_starts(parts: Sequence[str], target: Sequence[str]) -> list[int]:
    k = len(target)
    return [i for i in range(len(parts) - k + 1) if list(parts[i:i + k]) == list(target)]


def keyword_hits(text: str, keywords: Iterable[str], case_sensitive: bool = True) -> dict[str, int]:
    """Occurrences of each keyword in `text`, matched on whole sub-words (see module docstring)."""
    parts = subwords(text, case_sensitive)
    hits: dict[str, int] = {}
    for keyword in keywords:
        target = subwords(keyword, case_sensitive)
        if not target:
            raise ValueError(f"keyword {keyword!r} has no letters or digits to match")
        hits[keyword] = len(_match_starts(parts, target))
    return hits


def keyword_count(text: str, keywords: Iterable[str], case_sensitive: bool = True) -> int:
    """Sub-word positions of `text` where at least one keyword match starts: overlapping keywords
    ("assert" and "assertEqual" in `assertEqual`) count once, so a keyword list with variants
    does not inflate the score."""
    parts = subwords(text, case_sensitive)
    starts: set[int] = set()
    for keyword in keywords:
        target = subwords(keyword, case_sensitive)
        if not target:
            raise ValueError(f"keyword {keyword!r} has no letters or digits to match")
        starts.update(_match_starts(parts, target))
    return len(starts)


# ---------------------------------------------------------------------------------------------
# Semantic domain score
# ---------------------------------------------------------------------------------------------

EncoderChoice = Literal["auto", "minilm", "hashing"]
ENCODER_CHOICES: tuple[str, ...] = ("auto", "minilm", "hashing")


def load_encoder(choice: str = "auto") -> Any:
    """The sentence encoder of the semantic score: "minilm" (all-MiniLM-L6-v2 from the
    `embeddings` extra; ImportError naming the extra when it is missing), "hashing" (deterministic,
    no model) or "auto" (MiniLM when installed, else hashing)."""
    from steerswitch.rag.dense import HashingEncoder, default_encoder

    if choice not in ENCODER_CHOICES:
        raise ValueError(f"encoder must be one of {', '.join(ENCODER_CHOICES)}, not {choice!r}")
    if choice == "hashing":
        return HashingEncoder()
    try:
        return default_encoder()
    except ImportError:
        if choice == "minilm":
            raise
        return HashingEncoder()


class SemanticScorer:
    """score(text, domain) = mean cosine(text, domain references) - mean cosine(text, neutral
    references), on unit-normalised sentence embeddings (see the module docstring)."""

    def __init__(self, encoder: Any, references: Mapping[str, Sequence[str]], neutral: Sequence[str]) -> None:
        if not neutral:
            raise ValueError("SemanticScorer needs at least one neutral reference text")
        empty = [d for d, refs in references.items() if not refs]
        if empty:
            raise ValueError(f"SemanticScorer: no reference texts for {empty}")
        self.encoder = encoder
        self.encoder_name = str(getattr(encoder, "name", type(encoder).__name__))
        self._memo: dict[str, np.ndarray] = {}
        # mean of unit vectors: its dot product with a unit vector is the mean cosine to the set
        self._neutral = self.embed(list(neutral)).mean(axis=0)
        self._domains = {d: self.embed(list(refs)).mean(axis=0) for d, refs in references.items()}

    @property
    def domains(self) -> list[str]:
        return list(self._domains)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings (float32, one row per text); each distinct text is encoded once."""
        import numpy as np

        from steerswitch.rag.dense import normalize_rows

        todo = sorted({t for t in texts if t not in self._memo})
        if todo:
            for text, row in zip(todo, normalize_rows(self.encoder.encode(todo))):
                self._memo[text] = row
        if not texts:
            return np.zeros((0, int(self.encoder.dim)), dtype=np.float32)
        return np.stack([self._memo[t] for t in texts])

    def score(self, texts: Sequence[str | None], domain: str) -> list[float]:
        """The semantic score of each text for `domain` (an empty text scores 0)."""
        if domain not in self._domains:
            raise KeyError(f"no semantic references for domain {domain!r} (have {', '.join(self._domains) or 'none'})")
        direction = self._domains[domain] - self._neutral
        present = [t.strip() for t in texts if t and t.strip()]
        scores = iter((self.embed(present) @ direction).tolist()) if present else iter(())
        return [float(next(scores)) if t and t.strip() else 0.0 for t in texts]


def reference_prompts(domain: str, set_name: str | None = None) -> list[str] | None:
    """A domain's semantic references: the `extract` split of its shipped prompt set (`set_name`,
    default the domain's name), or of a JSONL prompt file at that path; None when there is none."""
    from pathlib import Path

    from steerswitch.vectors.prompts import PromptSetError, available_prompt_sets, load_prompt_set, read_prompt_file

    name = set_name or domain
    try:
        if name in available_prompt_sets():
            return load_prompt_set(name, "extract") or None
        if Path(name).suffix == ".jsonl" and Path(name).is_file():
            return read_prompt_file(name, "extract") or None
    except PromptSetError:
        return None
    return None


def semantic_scorer(registry: Any, domains: Sequence[str] | None = None, encoder: Any = "auto") -> SemanticScorer | None:
    """A scorer for a registry's domains whose prompt sets are known (the entry's `prompts.set`, or
    a shipped set of the domain's name); None when no domain has references. `encoder`: a choice
    for `load_encoder` or an encoder object."""
    from steerswitch.vectors.prompts import NEUTRAL

    refs: dict[str, list[str]] = {}
    neutral_name = NEUTRAL
    for domain in domains if domains is not None else registry.domains:
        ref = registry.entry(domain).prompts
        texts = reference_prompts(domain, ref.set if ref is not None else None)
        if texts:
            refs[domain] = texts
            if ref is not None and ref.neutral:
                neutral_name = ref.neutral
    neutral = reference_prompts(NEUTRAL, neutral_name) or reference_prompts(NEUTRAL)
    if not refs or not neutral:
        return None
    return SemanticScorer(load_encoder(encoder) if isinstance(encoder, str) else encoder, refs, neutral)


# ---------------------------------------------------------------------------------------------
# Fluency bounds
# ---------------------------------------------------------------------------------------------


def empty_share(texts: Sequence[str | None]) -> float:
    """The share of outputs with no text but whitespace (0 for no outputs)."""
    return sum(1 for t in texts if not (t or "").strip()) / len(texts) if texts else 0.0


class FluencyCheck(BaseModel):
    fluent: bool
    reasons: list[str] = Field(default_factory=list)

    @property
    def degenerate(self) -> bool:
        return not self.fluent


class FluencyBounds(BaseModel):
    """How far a steered result may drift from the unsteered one on the same prompts."""

    model_config = ConfigDict(frozen=True)

    max_rep3_delta: float = Field(default=0.1, ge=0)  # mean rep3 above the unsteered mean rep3
    max_surprise_delta: float = Field(default=1.5, ge=0)  # bits/token above the unsteered mean surprise
    max_empty_delta: float = Field(default=0.1, ge=0)  # share of empty outputs above the unsteered share

    def check(self, rep3: float | None, surprise: float | None, control_rep3: float | None, control_surprise: float | None,
              empty: float = 0.0, control_empty: float = 0.0) -> FluencyCheck:
        """Fluent or degenerate, with the bound(s) broken. A missing steered rep3 is degenerate
        (nothing to judge); a missing surprise (no generated token) skips that bound. ``empty`` /
        ``control_empty``: the shares of outputs with no text (see `empty_share`)."""
        reasons: list[str] = []
        if empty >= 1.0:
            reasons.append("every output is empty")
        elif empty > control_empty + self.max_empty_delta + 1e-12:
            reasons.append(f"{empty:.0%} of outputs empty > unsteered {control_empty:.0%} + {self.max_empty_delta:.0%}")
        if rep3 is None or math.isnan(rep3):
            reasons.append("no rep3")
        elif rep3 > (control_rep3 or 0.0) + self.max_rep3_delta + 1e-12:
            reasons.append(f"rep3 {rep3:.2f} > unsteered {control_rep3 or 0.0:.2f} + {self.max_rep3_delta:g}")
        if surprise is not None and control_surprise is not None and not math.isnan(surprise) and not math.isnan(control_surprise):
            if surprise > control_surprise + self.max_surprise_delta + 1e-12:
                reasons.append(f"surprise {surprise:.2f} > unsteered {control_surprise:.2f} + {self.max_surprise_delta:g} bits")
        return FluencyCheck(fluent=not reasons, reasons=reasons)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


class Summary(BaseModel):
    """Mean of n values with its standard error and a bootstrap percentile interval."""

    model_config = ConfigDict(frozen=True)

    n: int
    mean: float | None
    se: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None


def _clean(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def mean_se(values: Iterable[float | None]) -> tuple[float, float]:
    """(mean, standard error) ignoring None/nan; (nan, nan) for no values, se nan for one."""
    xs = _clean(values)
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(xs) / n
    if n < 2:
        return mean, float("nan")
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var / n)


def bootstrap_ci(
    values: Iterable[float | None],
    statistic: Callable[[Sequence[float]], float] | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` (default: the mean), seeded."""
    xs = _clean(values)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not xs:
        return float("nan"), float("nan")
    stat = statistic or (lambda s: sum(s) / len(s))
    rng = random.Random(seed)
    n = len(xs)
    stats = sorted(stat([xs[rng.randrange(n)] for _ in range(n)]) for _ in range(max(1, n_boot)))
    lo_idx = int(math.floor((1 - level) / 2 * (len(stats) - 1)))
    hi_idx = int(math.ceil((1 + level) / 2 * (len(stats) - 1)))
    return stats[lo_idx], stats[hi_idx]


def _finite_or_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def summarize(values: Iterable[float | None], bootstrap: int = 0, level: float = 0.95, seed: int = 0) -> Summary:
    """n, mean, se (and a bootstrap interval when `bootstrap` > 0) of the non-missing values."""
    xs = _clean(values)
    mean, se = mean_se(xs)
    lo = hi = None
    if bootstrap > 0 and xs:
        lo, hi = bootstrap_ci(xs, n_boot=bootstrap, level=level, seed=seed)
    return Summary(
        n=len(xs), mean=_finite_or_none(mean), se=_finite_or_none(se), ci_low=lo, ci_high=hi,
        ci_level=level if bootstrap > 0 and xs else None,
    )


def paired_differences(a: Sequence[float | None], b: Sequence[float | None]) -> list[float]:
    """a_i - b_i for the pairs where both are present (paired by index, e.g. by prompt)."""
    if len(a) != len(b):
        raise ValueError(f"paired_differences: {len(a)} vs {len(b)} values; pairs must line up by prompt")
    return [float(x) - float(y) for x, y in zip(a, b) if x is not None and y is not None and not (math.isnan(x) or math.isnan(y))]


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes.

    `a_only`: pairs where only A succeeded, `b_only`: only B. Under H0 the discordant pairs split
    as Binomial(a_only + b_only, 1/2); p = min(1, 2 P(X <= min)). No discordant pairs: p = 1.
    """
    if a_only < 0 or b_only < 0:
        raise ValueError(f"mcnemar_exact: counts must be >= 0, got {a_only}, {b_only}")
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def harmonic_mean(scores: Sequence[float]) -> float:
    """Harmonic mean of non-negative scores; 0 if any score is 0 (AxBench's combiner)."""
    if not scores:
        raise ValueError("harmonic_mean needs at least one score")
    if any(s < 0 for s in scores):
        raise ValueError(f"harmonic_mean takes non-negative scores, got {list(scores)}")
    if any(s == 0 for s in scores):
        return 0.0
    return len(scores) / sum(1.0 / s for s in scores)


# ---------------------------------------------------------------------------------------------
# Judges (optional)
# ---------------------------------------------------------------------------------------------

Criterion = Literal["concept", "instruction", "fluency"]
CRITERIA: tuple[Criterion, ...] = ("concept", "instruction", "fluency")


class JudgeScores(BaseModel):
    """AxBench-style ratings on a 0..2 scale and their harmonic mean."""

    concept: float = Field(ge=0, le=2)
    instruction: float = Field(ge=0, le=2)
    fluency: float = Field(ge=0, le=2)

    @property
    def combined(self) -> float:
        return harmonic_mean([self.concept, self.instruction, self.fluency])


class Judge(Protocol):
    def __call__(self, criterion: Criterion, prompt: str, response: str, concept: str) -> float: ...


def judge_response(judge: Judge | Callable[..., float], prompt: str, response: str, concept: str) -> JudgeScores:
    """Rate one response on the three criteria with any callable
    `judge(criterion, prompt, response, concept) -> float in [0, 2]`."""
    scores: dict[str, float] = {}
    for criterion in CRITERIA:
        value = float(judge(criterion, prompt, response, concept))
        if not 0 <= value <= 2 or math.isnan(value):
            raise ValueError(f"judge returned {value} for {criterion!r}; scores must lie in [0, 2]")
        scores[criterion] = value
    return JudgeScores(**scores)


_JUDGE_TEMPLATES: Mapping[str, str] = {
    "concept": "Rate from 0 to 2 how much the response is about '{concept}'.\nResponse:\n{response}\nRating (0, 1 or 2):",
    "instruction": "Rate from 0 to 2 how well the response follows the instruction.\nInstruction:\n{prompt}\nResponse:\n{response}\nRating (0, 1 or 2):",
    "fluency": "Rate from 0 to 2 how fluent and well-formed the response is.\nResponse:\n{response}\nRating (0, 1 or 2):",
}


class HFJudge:
    """A judge backed by a local Hugging Face causal LM: the score is the expected rating under
    the model's next-token distribution restricted to the tokens "0", "1", "2".

    Accepts a `SteeringEngine` (scored unsteered) or a (model, tokenizer) pair. Meant for an
    instruction-tuned model; the shipped tiny model is far too small to judge anything.
    """

    def __init__(self, engine_or_model: Any, tokenizer: Any | None = None, templates: Mapping[str, str] | None = None, chat: bool | None = None) -> None:
        from steerswitch.engine import SteeringEngine

        self.engine = engine_or_model if isinstance(engine_or_model, SteeringEngine) else SteeringEngine(engine_or_model, tokenizer)
        if self.engine.tokenizer is None:
            raise ValueError("HFJudge needs a tokenizer")
        self.templates = dict(_JUDGE_TEMPLATES if templates is None else templates)
        missing = [c for c in CRITERIA if c not in self.templates]
        if missing:
            raise ValueError(f"HFJudge templates lack criteria {missing}")
        self.chat = chat
        self.digits: list[int] = []
        for d in ("0", "1", "2"):
            # The digit's own token: the last piece ("▁" prefixes of SentencePiece-style
            # tokenizers come first), and it must decode to the digit.
            ids = self.engine.tokenizer.encode(d, add_special_tokens=False)
            if not ids or self.engine.tokenizer.decode([ids[-1]]).strip() != d:
                raise ValueError(f"the judge tokenizer has no single token for the rating {d!r}")
            self.digits.append(ids[-1])

    def __call__(self, criterion: Criterion, prompt: str, response: str, concept: str) -> float:
        text = self.templates[criterion].format(prompt=prompt, response=response, concept=concept)
        logp = self.engine.next_token_logprobs([text], steers=[], chat=self.chat)[0]
        sub = torch.log_softmax(logp[self.digits].double(), dim=-1).exp()
        return float((sub * torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)).sum())
