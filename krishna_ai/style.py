"""Style validator: does a reply meet its persona's constraints?

`check_reply` returns one `Violation` per broken rule, each with a stable rule name that the UI shows
as a badge and `eval` aggregates into per-rule compliance rates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from krishna_ai.personas import Persona, Style

RULES = (
    "empty_reply",
    "missing_address",
    "forbidden_word",
    "sentence_count",
    "missing_story",
    "verse_quote",
    "too_long",
    "missing_pattern",
)
"""Every rule name `check_reply` can report (``missing_pattern`` is reported as ``missing_<name>``)."""

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")
_VERSE_REF = re.compile(
    r"(?ix)"
    r"\b(?:chapter|ch\.?|adhyaya)\s*\d+\s*[,:]?\s*(?:verse|v\.?|shloka|sloka)\s*\d+"
    r"|\b(?:verse|shloka|sloka)\s+\d+"
    r"|\b(?:BG|Gita)\s*\d+\s*[.:]\s*\d+"
    r"|\(\s*\d{1,2}\s*[.:]\s*\d{1,2}\s*\)"
)
_QUOTED = re.compile(r"[\"“]([^\"“”]+)[\"”]")
_QUOTE_MIN_WORDS = 6


@dataclass(frozen=True)
class Violation:
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences at . ! ? … followed by whitespace (a trailing fragment counts)."""
    text = " ".join(text.split())
    return [s for s in _SENTENCE_END.split(text) if s.strip()]


def paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines, stripped, empties dropped."""
    return [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'’-]+", text)


def check_reply(reply: str, persona: Persona | Style) -> list[Violation]:
    """Check `reply` against the persona's style; an empty list means it complies."""
    style = persona.style if isinstance(persona, Persona) else persona
    text = reply.strip()
    if not text:
        return [Violation("empty_reply", "the reply is empty")]
    out: list[Violation] = []

    if style.address and not re.search(rf"(?<!\w){re.escape(style.address)}(?!\w)", text):
        out.append(Violation("missing_address", f"never addresses the user as {style.address!r}"))

    for word in style.forbidden_words:
        hits = re.findall(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE)
        if hits:
            out.append(Violation("forbidden_word", f"uses {word!r} ({len(hits)}×)"))

    parts = paragraphs(text)
    answer = parts[0] if style.story else text
    if style.sentences:
        lo, hi = style.sentences
        n = len(split_sentences(answer))
        if not lo <= n <= hi:
            where = "the answer paragraph" if style.story else "the reply"
            out.append(Violation("sentence_count", f"{where} has {n} sentence(s); expected {lo}–{hi}"))

    if style.story:
        story = "\n\n".join(parts[1:])
        n_words = len(_words(story))
        if n_words < style.story_min_words:
            detail = "no story paragraph after the answer" if not story else (
                f"the story has {n_words} words; expected at least {style.story_min_words}")
            out.append(Violation("missing_story", detail))

    if style.no_verse_quotes:
        ref = _VERSE_REF.search(text)
        quoted = [q for q in _QUOTED.findall(text) if len(_words(q)) >= _QUOTE_MIN_WORDS]
        if ref:
            out.append(Violation("verse_quote", f"cites a verse ({ref.group(0).strip()!r}) instead of paraphrasing"))
        elif quoted:
            out.append(Violation("verse_quote", f"quotes a passage verbatim ({quoted[0][:40]!r}...)"))

    if style.max_words is not None:
        n = len(_words(text))
        if n > style.max_words:
            out.append(Violation("too_long", f"{n} words; at most {style.max_words}"))

    for req in style.require:
        if not re.search(req.pattern, text, flags=re.MULTILINE):
            hint = f" ({req.hint})" if req.hint else ""
            out.append(Violation(f"missing_{req.name}", f"does not contain the required {req.name}{hint}"))
    return out


def badge(violations: list[Violation]) -> str:
    """A one-line Markdown summary for the UI."""
    if not violations:
        return "✅ style: all rules met"
    return "⚠️ style: " + "; ".join(str(v) for v in violations)
