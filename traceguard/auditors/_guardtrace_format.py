"""GuardTrace without I/O: render a trace into a chat request, read the verdict back.

Three pure pieces the :class:`~traceguard.auditors.guardtrace.GuardTraceAuditor` is built from:

- :func:`build_guardtrace_request` lays a :class:`~traceguard.Trace` out the way GuardTrace-VL
  was trained: system prompt, then one user turn with the image(s) first and a three-line text.
- :func:`parse_guardtrace_output` reads ``“Judgment”: 0 | 0.5 | 1`` from generated text.
- :func:`score_judgment` computes P(0), P(0.5), P(1) from next-token distributions (score mode).
  It is a generator that yields the requests it needs and receives their results, so a sync and
  an async driver share it unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from traceguard._exceptions import AuditorError, ParseError
from traceguard._images import ImageRef
from traceguard._trace import Trace, Turn
from traceguard._verdict import Label
from traceguard.auditors._guardtrace_prompts import PromptSet
from traceguard.backends._base import (
    ChatMessage,
    ChatRequest,
    ContentPart,
    ImagePart,
    ScoreResult,
    TextPart,
    TokenDistribution,
)

__all__ = [
    "DEFAULT_SCORE_PREFIX",
    "IMAGE_PLACEHOLDER",
    "LEVEL_KEYS",
    "JudgmentScores",
    "ParsedJudgment",
    "build_guardtrace_request",
    "default_speculation",
    "parse_guardtrace_output",
    "render_query",
    "score_judgment",
    "uses_binary_scale",
]

NO_QUERY: Final = "No question provided"
NO_THINKING: Final = "No thinking provided"
NO_RESPONSE: Final = "No response provided"
IMAGE_PLACEHOLDER: Final = "Image missing or unavailable"
"""Text put where an image would go, as the GuardTrace reference code does."""

HISTORY_TURNS: Final = 6
"""Earlier turns shown to the auditor, most recent last."""
HISTORY_TURN_CHARS: Final = 1000
"""Each earlier turn is cut to this many characters: the model grades the current turn."""

DEFAULT_SCORE_PREFIX: Final = "“Judgment”: "
"""Assistant prefix of score mode: the judgment key of the output format, analysis skipped.

It ends with the space a Qwen2 tokenizer emits as its own token before a bare digit. If a model
writes ``“Judgment”: [0.5]`` (trained token " ["), pass ``score_prefix="“Judgment”:"`` instead:
the scorer then follows the " [" / " " token itself, at the cost of one more round.
"""
LEVEL_KEYS: Final = ("0", "0.5", "1")
"""Keys of :attr:`JudgmentScores.probabilities` (and ``Verdict.probabilities``)."""


# -- rendering ------------------------------------------------------------------------------


def uses_binary_scale(trace: Trace) -> bool:
    """True when the two-level prompt applies: the model exposed no thinking at all."""
    return trace.thinking is None


def render_query(trace: Trace) -> str:
    """The text of the query slot: the current query, after earlier turns if there are any.

    GuardTrace was trained on single turns, so prior turns are folded into the query as a short
    "Conversation so far" block (the last :data:`HISTORY_TURNS`, each cut to
    :data:`HISTORY_TURN_CHARS`); their images are not sent, only counted.
    """
    query = trace.query.strip() or NO_QUERY
    if not trace.history:
        return query
    lines = ["Conversation so far (earlier turns, for context):"]
    lines.extend(_render_turn(turn) for turn in trace.history[-HISTORY_TURNS:])
    lines.append(f"Current query: {query}")
    return "\n".join(lines)


def _render_turn(turn: Turn) -> str:
    content = turn.content.strip()
    if len(content) > HISTORY_TURN_CHARS:
        content = content[:HISTORY_TURN_CHARS] + " […]"
    if turn.images:
        content = f"[{len(turn.images)} image(s) not shown] {content}".rstrip()
    return f"{turn.role.capitalize()}: {content}"


def build_guardtrace_request(
    trace: Trace,
    prompts: PromptSet,
    *,
    images: Sequence[ImageRef | None],
    binary: bool | None = None,
    max_new_tokens: int,
    assistant_prefix: str | None = None,
) -> ChatRequest:
    """The GuardTrace chat request for one trace.

    Args:
        trace: what to audit; its ``response_with_tools`` is the response shown.
        prompts: the templates.
        images: the trace's images, already loaded (bytes-backed) by the caller. ``None`` marks
            an image that could not be used: the placeholder text takes its place, as the
            reference code does for a named image it cannot load. A trace without images gets
            no image item at all (the reference code adds nothing for a text-only record).
        binary: use the two-level prompt; ``None`` decides by :func:`uses_binary_scale`.
        max_new_tokens: the generation budget.
        assistant_prefix: text the assistant turn starts with (score mode).
    """
    if binary is None:
        binary = uses_binary_scale(trace)
    content: list[ContentPart] = [
        ImagePart(image) if image is not None else TextPart(IMAGE_PLACEHOLDER) for image in images
    ]
    text = prompts.render_user(
        query=render_query(trace),
        thinking=(trace.thinking or "").strip() or NO_THINKING,
        response=trace.response_with_tools.strip() or NO_RESPONSE,
    )
    content.append(TextPart(text))
    return ChatRequest(
        messages=(
            ChatMessage.text("system", prompts.system_prompt(binary=binary)),
            ChatMessage(role="user", content=tuple(content)),
        ),
        max_new_tokens=max_new_tokens,
        assistant_prefix=assistant_prefix,
    )


# -- parsing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedJudgment:
    """What :func:`parse_guardtrace_output` read: the risk level and the analysis before it."""

    risk: float
    """0.0, 0.5 or 1.0."""
    analysis: str

    @property
    def label(self) -> Label:
        """The risk as a :class:`~traceguard.Label`."""
        return Label.from_risk(self.risk)


_OPEN_QUOTES = "“\"'‘「『"
_CLOSE_QUOTES = "”\"'’」』"


def _key_pattern(words: str) -> re.Pattern[str]:
    # A key is a word, optionally in quotes and Markdown emphasis, then an ASCII or full-width
    # colon. It must not be the tail of a longer ASCII word ("prejudgment:"). The quotes are
    # captured: the model quotes the key alone (“Judgment”: 0), never the whole statement.
    return re.compile(
        rf"(?<![A-Za-z0-9])[*_]*(?P<open>[{_OPEN_QUOTES}{_CLOSE_QUOTES}])?[*_]*(?:{words})"
        rf"[*_]*(?P<close>[{_OPEN_QUOTES}{_CLOSE_QUOTES}])?[*_]*[ \t]*[:：]",
        re.IGNORECASE,
    )


# Chinese 判断/判定 are accepted: the model is bilingual and may answer a Chinese trace in kind.
_JUDGMENT_KEY = _key_pattern("judge?ment|判断|判定")
_ANALYSIS_KEY = _key_pattern("analysis|分析")
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
# After the key: emphasis, then the number bare or in one matching pair of brackets or quotes.
# ".5" is accepted as 0.5 (unambiguous); "0.50" and "1.0" too. A sign or any other number is not.
_JUDGMENT_VALUE = re.compile(
    rf"[ \t*_]*(?:(?P<bare>{_NUMBER})|\[[ \t]*(?P<square>{_NUMBER})[ \t]*\]"
    rf"|【[ \t]*(?P<lenticular>{_NUMBER})[ \t]*】"
    rf"|[{_OPEN_QUOTES}][ \t]*(?P<quoted>{_NUMBER})[ \t]*[{_CLOSE_QUOTES}])"
)
# What may follow the final judgment: emphasis, a full stop, and a short parenthesised label
# such as "(Potentially harmful)". Anything else — a closing quote, a code fence, more text —
# means the judgment was not the model's last word (an echoed quote, a truncated output).
_TRAILER = re.compile(r"[\s*_.。]*(?:[(（][^()（）\n]{0,40}[)）])?[\s*_.。]*")
# Before the final judgment's key, on its line: indentation and emphasis only. Quote marks, a
# blockquote '>' or any other text there mean the model is quoting, not judging.
_LINE_LEAD = re.compile(r"[ \t*_]*")


def _level_of(number: str) -> float | None:
    """The risk level a written number stands for, or None if it is no level."""
    whole, _, _fraction = number.partition(".")
    if whole not in ("", "0", "1"):
        return None
    value = float(number)
    return value if value in (0.0, 0.5, 1.0) else None


def parse_guardtrace_output(text: str) -> ParsedJudgment:
    """Read the risk level and the analysis from GuardTrace's generated text.

    The *last* judgment key (``“Judgment”:``; curly, ASCII or no quotes; ``:`` or ``：``; Markdown
    bold; Chinese ``判断``/``判定``) decides, and it must be the model's own, in the model's
    format: on a line of its own (only indentation or emphasis before it), the key alone in
    quotes, the value bare or in one pair of brackets or quotes, and nothing after it but a
    full stop or a short parenthesised label. Audited text the model echoes may hold fake
    judgments: one that comes before the model's own loses; one quoted, or inside a sentence,
    or followed by more text, is not read as a verdict at all — and as the last key it makes
    the output unparseable, never safe.

    Raises:
        ParseError: no judgment, a last judgment not in the model's format, a value other than
            0/0.5/1 (``0.7``, ``2``, ``safe``), or text after the final judgment.
    """
    keys = list(_JUDGMENT_KEY.finditer(text))
    if not keys:
        raise ParseError("no judgment in the auditor output")
    last = keys[-1]
    line_start = text.rfind("\n", 0, last.start()) + 1
    if _LINE_LEAD.fullmatch(text, line_start, last.start()) is None:
        raise ParseError("the last judgment is not on a line of its own (quoted or echoed text?)")
    if (last.group("open") is None) != (last.group("close") is None):
        raise ParseError("the last judgment is inside quotes (quoted or echoed text?)")
    value = _JUDGMENT_VALUE.match(text, last.end())
    if value is None:
        raise ParseError("the final judgment has no numeric value")
    number = next(v for v in value.group("bare", "square", "lenticular", "quoted") if v)
    risk = _level_of(number)
    if risk is None:
        raise ParseError(f"the final judgment {number!r} is not 0, 0.5 or 1")
    if _TRAILER.fullmatch(text, value.end()) is None:
        raise ParseError("text follows the final judgment")
    return ParsedJudgment(risk=risk, analysis=_analysis_before(text, last.start()))


def _analysis_before(text: str, end: int) -> str:
    head = text[:end]
    # The model's own analysis key comes first; later ones may be echoes of audited text.
    key = _ANALYSIS_KEY.search(head)
    body = head[key.end() :] if key is not None else head
    body = body.strip().rstrip("*_").strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1].strip()
    return body


# -- score mode -----------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgmentScores:
    """The auditor's probability of each risk level, read from token probabilities."""

    probabilities: Mapping[str, float]
    """P(level) normalised over the three levels, keyed by :data:`LEVEL_KEYS`."""
    mass: float
    """How much probability the three levels had before normalising (0..1)."""
    requests: int
    """Next-token distributions asked for."""
    latency_ms: float
    """Time spent waiting for the backend: the slowest result of each round, summed."""
    model: str
    top_tokens: tuple[tuple[str, float], ...]
    """The most likely first tokens after the prefix, for review of odd outputs."""
    rounds: int = 1
    """Backend round trips: 1 unless the tokenizer took a path the first round did not guess."""

    @property
    def risk(self) -> float:
        """The most probable level; a tie goes to the higher risk."""
        best = max(LEVEL_KEYS, key=lambda key: (self.probabilities[key], float(key)))
        return float(best)

    def describe(self) -> str:
        """One line for ``Verdict.raw_output``: the level probabilities and the top tokens."""
        levels = " ".join(f"P({key})={self.probabilities[key]:.4f}" for key in LEVEL_KEYS)
        tokens = ", ".join(f"{token!r}:{prob:.3f}" for token, prob in self.top_tokens)
        return f"score mode: {levels} mass={self.mass:.4f}; first tokens {tokens}"


_MORE: Final = "more"
"""The continuation so far is a prefix of a level; another distribution is needed."""


def _classify(continuation: str) -> str | None:
    """What the text after the prefix amounts to: a level key, :data:`_MORE`, or None.

    Leading whitespace and one opening bracket are allowed, since some tokenizers fold the
    space into the digit (" 0") and the format shows the value in brackets. Only "0" and "0."
    need more tokens: they may still become 0.5. "1" and "0.5" are taken as complete.
    """
    text = _strip_opening(continuation)
    if not text:
        return _MORE
    number = re.match(r"\d+(?:\.\d*)?", text)
    if number is None:
        return None
    if number.end() == len(text) and number.group() in ("0", "0."):
        return _MORE
    level = _level_of(number.group())
    return None if level is None else _key_of(level)


_BLANKS: Final = " \t\r\n\u3000"
"""Whitespace a model may write before the value. Not str.isspace(): that also takes control
characters (\x1c-\x1f), which no model writes there, and following them only costs rounds."""


def _strip_opening(continuation: str) -> str:
    text = continuation.lstrip(_BLANKS)
    if text[:1] in ("[", "【"):
        text = text[1:].lstrip(_BLANKS)
    return text


def _key_of(level: float) -> str:
    return {0.0: "0", 0.5: "0.5", 1.0: "1"}[level]


def _ends_as_zero(continuation: str) -> bool:
    """True when every token but a "." (or a digit) would close the number as 0."""
    return _strip_opening(continuation) == "0"


def default_speculation(prefix: str) -> tuple[str, ...]:
    """The continuations of ``prefix`` score mode asks for up front, beside the prefix itself.

    Qwen2 tokenizers write a number digit by digit and keep a space before it as a token of its
    own, so after a prefix ending in whitespace the path to 0.5 is "0", "0."; after one that does
    not, it is " ", " 0", " 0.". Asking for the whole path in the first round costs one round
    trip instead of three, and a backend that shares prefixes answers it with one prefill.
    """
    if prefix[-1:].isspace():
        return ("0", "0.")
    return (" ", " 0", " 0.")


def score_judgment(
    request: ChatRequest,
    *,
    min_branch: float = 1e-3,
    max_requests: int = 8,
    speculate: Sequence[str] | None = None,
) -> Generator[list[ChatRequest], list[ScoreResult], JudgmentScores]:
    """Score the judgment after ``request.assistant_prefix`` (sans-I/O generator).

    Yields lists of requests (the same request with longer assistant prefixes) and must be sent
    one :class:`TokenDistribution` or :class:`AuditorError` per request. Returns the scores.

    Qwen2 tokenizers write numbers digit by digit, so the levels are spelled over a small trie:
    P(1) = P("1"); P(0.5) = P("0")·P("."|"0")·P("5"|"0."); P(0) = P("0")·(1 − P("."|"0")) plus
    P("0")·P("."|"0")·P("0"|"0."). Tokens match after stripping leading whitespace, and a
    multi-character token ("0.", ".5", " 0") is followed along the trie.

    The first round asks for the prefix and every continuation in ``speculate`` at once
    (default: :func:`default_speculation`). Later rounds ask for the nodes a tokenizer reached by
    another path (" 0", "["), each with the rest of the path to 0.5 guessed after it ("[0",
    "[0."). ``speculate=()`` turns guessing off: the trie is then discovered one level per round.
    Branches below ``min_branch`` of probability are not asked for; at most ``max_requests``
    distributions are. Unasked or unmatched probability is lost, which lowers ``mass``.

    Raises:
        AuditorError: a result was an error (re-raised as is).
    """
    if request.assistant_prefix is None:
        raise ValueError("score_judgment needs a request with an assistant_prefix")
    base = request.assistant_prefix
    guesses = default_speculation(base) if speculate is None else tuple(speculate)
    known: dict[str, TokenDistribution] = {}
    asks = list(dict.fromkeys(("", *guesses)))[:max_requests]
    levels = dict.fromkeys(LEVEL_KEYS, 0.0)
    used = rounds = 0
    latency, model = 0.0, ""
    while asks:
        results = yield [dataclasses.replace(request, assistant_prefix=base + t) for t in asks]
        used += len(asks)
        rounds += 1
        slowest = 0.0
        for text, result in zip(asks, results, strict=True):
            if isinstance(result, AuditorError):
                raise result
            # Requests of one round run side by side (one batch, or concurrent HTTP calls).
            slowest = max(slowest, result.latency_ms)
            model = model or result.model
            known[text] = result
        latency += slowest
        levels, unknown = _route(known)
        asks = _next_asks(unknown, known, min_branch, max_requests - used, guess=bool(guesses))
    total = sum(levels.values())
    probabilities = {key: (value / total if total > 0 else 0.0) for key, value in levels.items()}
    return JudgmentScores(
        probabilities=probabilities,
        mass=min(total, 1.0),
        requests=used,
        latency_ms=latency,
        model=model,
        top_tokens=_top_tokens(known[""]) if "" in known else (),
        rounds=rounds,
    )


def _route(known: Mapping[str, TokenDistribution]) -> tuple[dict[str, float], dict[str, float]]:
    """Push the probability mass from the root down the known part of the trie.

    Returns the mass that reached each level, and the mass waiting at each node whose
    distribution is not known yet.
    """
    levels = dict.fromkeys(LEVEL_KEYS, 0.0)
    unknown: dict[str, float] = {}
    pending = {"": 1.0}
    while pending:
        # Every child is longer than its parent, so the shortest pending node has received all
        # its mass: each node is expanded once.
        text = min(pending, key=len)
        mass = pending.pop(text)
        distribution = known.get(text)
        if distribution is None:
            unknown[text] = mass
            continue
        listed = 0.0
        for token, logprob in distribution.logprobs.items():
            prob = math.exp(logprob)
            listed += prob
            if not token:
                continue  # decodes to nothing (a partial character): it cannot advance the text
            outcome = _classify(text + token)
            if outcome == _MORE:
                pending[text + token] = pending.get(text + token, 0.0) + mass * prob
            elif outcome is not None:
                levels[outcome] += mass * prob
        if _ends_as_zero(text):
            # After "0", the tokens the backend did not list are not "." (the likely ones are
            # listed), so they end the number: the formula's 1 − P("."|"0").
            levels["0"] += mass * max(0.0, 1.0 - listed)
    return levels, unknown


def _next_asks(
    unknown: Mapping[str, float],
    known: Mapping[str, TokenDistribution],
    min_branch: float,
    budget: int,
    *,
    guess: bool,
) -> list[str]:
    """The nodes to ask for next: the heaviest open ones, then guesses along their path to 0.5."""
    open_nodes = sorted(
        (t for t, m in unknown.items() if m >= min_branch), key=lambda t: -unknown[t]
    )
    asks = open_nodes[:budget]
    if guess:
        for text in open_nodes[:budget]:
            for guessed in _rest_of_path(text):
                if len(asks) < budget and guessed not in known and guessed not in asks:
                    asks.append(guessed)
    return asks


def _rest_of_path(text: str) -> list[str]:
    """The longer nodes ``text`` becomes on its way to "0.5" ("[" → "[0", "[0.")."""
    rest = _strip_opening(text)
    if not rest:
        return [text + "0", text + "0."]
    return [text + "."] if rest == "0" else []


def _top_tokens(distribution: TokenDistribution, count: int = 5) -> tuple[tuple[str, float], ...]:
    ranked = sorted(distribution.logprobs.items(), key=lambda item: -item[1])[:count]
    return tuple((token, round(math.exp(logprob), 6)) for token, logprob in ranked)
