"""Style validator: does a reply meet its persona's constraints?

`check_reply` returns one `Violation` per broken rule, each with a stable rule name that the UI shows
as a badge and `eval` aggregates into per-rule compliance rates.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
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
    "not_ended",
    "leaked",
    "looped",
)
"""Every rule name `check_reply` can report (``missing_pattern`` is reported as ``missing_<name>``).

The last three judge the reply as text, not its form: it closed its turn (`not_ended`: cut at
max_new_tokens), nothing of the chat machinery, of its own instructions or of a second reply is in it
(`leaked`), and it does not repeat itself (`looped`). A run-on reply is never "all rules met"."""

PASS_LABELS = {
    "empty_reply": "non-empty", "missing_address": "addresses user", "forbidden_word": "no forbidden word",
    "sentence_count": "sentence count ok", "missing_story": "has story", "verse_quote": "no verse quote",
    "too_long": "length ok", "not_ended": "ended", "leaked": "no leak", "looped": "no loop",
}
"""What a rule's pass rate measures, for table headers (``missing_<name>`` -> ``has <name>``)."""


def pass_label(rule: str) -> str:
    if rule in PASS_LABELS:
        return PASS_LABELS[rule]
    return "has " + rule.removeprefix("missing_").replace("_", " ")

# The space after . ! ? … (and up to two closing quotes or brackets, which stay with their sentence).
_SENTENCE_END = re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][\"'”’)\]])|(?<=[.!?…][\"'”’)\]]{2}))\s+")
_VERSE_REF = re.compile(
    r"(?ix)"
    r"\b(?:chapter|ch\.?|adhyaya)\s*\d+\s*[,:]?\s*(?:verse|v\.?|shloka|sloka)\s*\d+"
    r"|\b(?:verse|shloka|sloka)\s+\d+"
    r"|\b(?:BG|Gita)\s*\d+\s*[.:]\s*\d+"
    r"|\(\s*\d{1,2}\s*[.:]\s*\d{1,2}\s*\)"
)
# A turn marker or role line of the chat format, or a code-like vocabulary piece glued into prose
# ("stepToken", "WithFieldContext"): what an untrained end-of-turn row makes a base model emit.
_MARKER = re.compile(r"<\s*/?\s*(?:start_of_turn|end_of_turn|eos|bos|pad|start_of_image|end_of_image)\s*>|"
                     r"^\s*(?:model|user)\s*$", re.MULTILINE)
_STRAY = re.compile(r"(?<![\w@/#-])(?:[a-z]{2,}(?:[A-Z][a-z0-9]+)+|[A-Z][a-z]+(?:[A-Z][a-z0-9]+){2,})(?![\w@-]|\.\w)")
_LOOP_NGRAM = 10
_RESTATE_MIN_WORDS = 8
_RESTATE_SHARE = 0.7
_ECHO_NGRAM = 8
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


def _norm_words(text: str) -> list[str]:
    return [w.lower() for w in _words(text)]


def _runs(words: list[str], n: int) -> Iterator[tuple[str, ...]]:
    """Every run of `n` consecutive words, in order."""
    return (tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def leak(reply: str, style: Style | None = None) -> str | None:
    """What in `reply` belongs to the chat machinery or to a second reply, or None."""
    m = _MARKER.search(reply)
    if m:
        return f"a turn marker or role line ({m.group(0).strip()!r})"
    m = _STRAY.search(reply)
    if m:
        return f"a stray vocabulary piece ({m.group(0)!r})"
    parts = paragraphs(reply)
    opening = _norm_words(parts[0])[:5] if parts else []
    if len(opening) >= 4:
        for later in parts[1:]:
            if _norm_words(later)[:5] == opening:
                return "a second reply (a later paragraph starts like the first)"
    for req in (style.require if style else []):
        if len(re.findall(req.pattern, reply, flags=re.MULTILINE)) > 1:
            return f"a second reply (the {req.name} line appears twice)"
    if style and style.address and style.story and len(parts) > 2:
        if re.match(rf"\W*{re.escape(style.address)}\b", parts[-1]):
            return f"a second reply (a paragraph after the story opens with {style.address!r})"
    return None


def instruction_echo(reply: str, persona: Persona) -> str | None:
    """An 8-word run of the persona's own instructions (system prompt, rules, story or knowledge
    instruction) copied into `reply`, or None: a model that echoes its prompt has leaked it. The cards
    are not instructions: retelling them word for word is what a grounded reply does."""
    texts = [persona.system_prompt, *persona.constraints, persona.story_template or ""]
    if persona.knowledge is not None:
        texts += [persona.knowledge.instruction, persona.knowledge.no_match or ""]
    instructed = {gram for text in texts for gram in _runs(_norm_words(text), _ECHO_NGRAM)}
    for gram in _runs(_norm_words(reply), _ECHO_NGRAM):
        if gram in instructed:
            return f"its own instructions ({' '.join(gram)[:60]!r})"
    return None


def loop(reply: str) -> str | None:
    """A sentence of 5+ words said twice, a sentence that restates an earlier one (70% or more of its 8+
    distinct words are in that sentence: "the ghats and temples she built along the river there" said again
    as "...built on the river there still stand"), or a 10-word run repeated; None when there is none.
    No answer in the shipped datasets restates itself by this measure (a test keeps it so); a shorter
    sentence is left alone ("Shivaji was born in 1630 in the Deccan" after a sentence on the Deccan)."""
    seen: set[tuple[str, ...]] = set()
    earlier: list[set[str]] = []
    for sentence in split_sentences(reply):
        words = tuple(_norm_words(sentence))
        if len(words) >= 5:
            if words in seen:
                return f"repeats the sentence {sentence[:60]!r}"
            seen.add(words)
        distinct = set(words)
        if len(distinct) >= _RESTATE_MIN_WORDS:
            if any(len(distinct & before) >= _RESTATE_SHARE * len(distinct) for before in earlier):
                return f"restates an earlier sentence ({sentence[:60]!r})"
            earlier.append(distinct)
    grams: set[tuple[str, ...]] = set()
    for gram in _runs(_norm_words(reply), _LOOP_NGRAM):
        if gram in grams:
            return f"repeats the run {' '.join(gram)[:60]!r}"
        grams.add(gram)
    return None


def check_reply(reply: str, persona: Persona | Style, finish_reason: str | None = None,
                story: bool | None = None) -> list[Violation]:
    """Check `reply` against the persona's style; an empty list means it complies.

    `finish_reason` (from `ReplyStats`) adds `not_ended` when the reply was cut at max_new_tokens.
    `story` overrides whether a story is due (False: no knowledge card fitted, so counsel only).
    """
    style = persona.style if isinstance(persona, Persona) else persona
    if story is not None:
        style = style.model_copy(update={"story": story})
    text = reply.strip()
    if not text:
        return [Violation("empty_reply", "the reply is empty")]
    out: list[Violation] = []
    if finish_reason == "max_tokens":
        out.append(Violation("not_ended", "cut at max_new_tokens: the model never closed its turn"))
    where = leak(text, style)
    if where is None and isinstance(persona, Persona):
        where = instruction_echo(text, persona)
    if where is not None:
        out.append(Violation("leaked", f"contains {where}"))
    if (what := loop(text)) is not None:
        out.append(Violation("looped", what))

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
        story_text = "\n\n".join(parts[1:])
        n_words = len(_words(story_text))
        if n_words < style.story_min_words:
            detail = "no story paragraph after the answer" if not story_text else (
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
