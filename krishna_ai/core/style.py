"""Style validator: does a reply meet its persona's constraints?

`check_reply` returns one `Violation` per broken rule, each with a stable rule name that the UI shows
as a badge and `eval` aggregates into per-rule compliance rates.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from krishna_ai.core.personas import Persona, Style

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
                     r"^\s*(?:model|user|assistant)\s*:?\s*$|^\W{0,3}(?:user|model|assistant)\W{0,3}:",
                     re.MULTILINE | re.IGNORECASE)
"""... in any case, with or without a colon: "model", "User:", "MODEL: Partha, ..." (a reply playing both sides)."""
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


def leak(reply: str, style: Style | None = None, asked: str = "") -> str | None:
    """What in `reply` belongs to the chat machinery or to a second reply, or None. A camel-cased word the user
    wrote in `asked` ("why does useEffect run twice") is theirs, not a stray vocabulary piece."""
    m = _MARKER.search(reply)
    if m:
        return f"a turn marker or role line ({m.group(0).strip()!r})"
    theirs = set(_STRAY.findall(asked))
    stray = next((w for w in _STRAY.findall(reply) if w not in theirs), None)
    if stray:
        return f"a stray vocabulary piece ({stray!r})"
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
    if persona.counsel is not None:
        texts.append(persona.counsel.instruction or "")
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


@dataclass(frozen=True)
class _Reply:
    """A non-empty reply as the rules see it."""

    text: str
    style: Style
    persona: Persona | None
    finish_reason: str | None
    asked: str = ""
    """The user's message the reply answers ("" when unknown)."""

    @property
    def parts(self) -> list[str]:
        return paragraphs(self.text)


def _not_ended(r: _Reply) -> Iterator[Violation]:
    if r.finish_reason == "max_tokens":
        yield Violation("not_ended", "cut at max_new_tokens: the model never closed its turn")
    elif r.finish_reason == "run_on":
        yield Violation("not_ended", "ran into a new turn: the model never closed its own")


def _leaked(r: _Reply) -> Iterator[Violation]:
    where = leak(r.text, r.style, r.asked)
    if where is None and r.persona is not None:
        where = instruction_echo(r.text, r.persona)
    if where is not None:
        yield Violation("leaked", f"contains {where}")


def _looped(r: _Reply) -> Iterator[Violation]:
    if (what := loop(r.text)) is not None:
        yield Violation("looped", what)


def _address(r: _Reply) -> Iterator[Violation]:
    address = r.style.address or ""
    if not re.search(rf"(?<!\w){re.escape(address)}(?!\w)", r.text):
        yield Violation("missing_address", f"never addresses the user as {address!r}")


def _forbidden(r: _Reply) -> Iterator[Violation]:
    for word in r.style.forbidden_words:
        hits = re.findall(rf"(?<!\w){re.escape(word)}(?!\w)", r.text, flags=re.IGNORECASE)
        if hits:
            yield Violation("forbidden_word", f"uses {word!r} ({len(hits)}×)")


def _sentences(r: _Reply) -> Iterator[Violation]:
    lo, hi = r.style.sentences or (0, 0)
    n = len(split_sentences(r.parts[0] if r.style.story else r.text))
    if not lo <= n <= hi:
        where = "the answer paragraph" if r.style.story else "the reply"
        yield Violation("sentence_count", f"{where} has {n} sentence(s); expected {lo}–{hi}")


def _story(r: _Reply) -> Iterator[Violation]:
    story_text = "\n\n".join(r.parts[1:])
    n_words = len(_words(story_text))
    if n_words < r.style.story_min_words:
        detail = "no story paragraph after the answer" if not story_text else (
            f"the story has {n_words} words; expected at least {r.style.story_min_words}")
        yield Violation("missing_story", detail)


def _verse_quote(r: _Reply) -> Iterator[Violation]:
    ref = _VERSE_REF.search(r.text)
    quoted = [q for q in _QUOTED.findall(r.text) if len(_words(q)) >= _QUOTE_MIN_WORDS]
    if ref:
        yield Violation("verse_quote", f"cites a verse ({ref.group(0).strip()!r}) instead of paraphrasing")
    elif quoted:
        yield Violation("verse_quote", f"quotes a passage verbatim ({quoted[0][:40]!r}...)")
    elif r.style.verses:
        n = r.style.verse_run
        known = verse_runs(r.style.verses, n)
        words = _norm_words(r.text)
        hit = next((i for i, run in enumerate(_runs(words, n)) if run in known), None)
        if hit is not None:
            yield Violation("verse_quote", f"repeats a well-known translation word for word "
                                           f"({' '.join(words[hit:hit + n])!r}...)")


def verse_runs(path: str, n: int) -> frozenset[tuple[str, ...]]:
    """Every run of `n` words (lower-cased) in the passages of a verses file (read once per file and change)."""
    file = Path(path)
    return _verse_runs(str(file), file.stat().st_mtime_ns, n)


@functools.lru_cache(maxsize=8)
def _verse_runs(path: str, _mtime: int, n: int) -> frozenset[tuple[str, ...]]:
    text = "\n".join(line for line in Path(path).read_text(encoding="utf-8").splitlines()
                     if not line.lstrip().startswith("#"))
    runs: set[tuple[str, ...]] = set()
    for passage in re.split(r"\n\s*\n", text):
        passage = re.sub(r"\([^)]*\)\s*$", "", passage.strip())  # the "(2.47, Besant)" label is not text
        runs.update(_runs(_norm_words(passage), n))
    return frozenset(runs)


def _too_long(r: _Reply) -> Iterator[Violation]:
    n, most = len(_words(r.text)), r.style.max_words
    if most is not None and n > most:
        yield Violation("too_long", f"{n} words; at most {most}")


def _patterns(r: _Reply) -> Iterator[Violation]:
    for req in r.style.require:
        if not re.search(req.pattern, r.text, flags=re.MULTILINE):
            hint = f" ({req.hint})" if req.hint else ""
            yield Violation(f"missing_{req.name}", f"does not contain the required {req.name}{hint}")


@dataclass(frozen=True)
class Rule:
    name: str
    """As reported; ``missing_pattern`` stands for one ``missing_<name>`` per required pattern."""
    label: str
    """What its pass rate measures, for table headers."""
    applies: Callable[[Style], bool]
    """Whether a persona with this style can break it (the columns of eval's per-rule table)."""
    check: Callable[[_Reply], Iterator[Violation]]


def _always(style: Style) -> bool:
    return True


RULES: tuple[Rule, ...] = (
    Rule("empty_reply", "non-empty", _always, lambda r: iter(())),  # checked first: nothing else is then
    Rule("not_ended", "ended", _always, _not_ended),
    Rule("leaked", "no leak", _always, _leaked),
    Rule("looped", "no loop", _always, _looped),
    Rule("missing_address", "addresses user", lambda s: bool(s.address), _address),
    Rule("forbidden_word", "no forbidden word", lambda s: bool(s.forbidden_words), _forbidden),
    Rule("sentence_count", "sentence count ok", lambda s: bool(s.sentences), _sentences),
    Rule("missing_story", "has story", lambda s: s.story, _story),
    Rule("verse_quote", "no verse quote", lambda s: s.no_verse_quotes, _verse_quote),
    Rule("too_long", "length ok", lambda s: s.max_words is not None, _too_long),
    Rule("missing_pattern", "has pattern", lambda s: bool(s.require), _patterns),
)
"""Every rule, once, in the order `check_reply` reports them. The first four judge the reply as text,
not its form: it has words, it closed its turn (`not_ended`: cut at max_new_tokens), nothing of the chat
machinery, of its own instructions or of a second reply is in it (`leaked`), and it does not repeat
itself (`looped`). A run-on reply is never "all rules met"."""

_BY_NAME = {rule.name: rule for rule in RULES}


def pass_label(rule: str) -> str:
    """The table header for a reported rule name (``missing_<name>`` of a required pattern: ``has <name>``)."""
    if rule in _BY_NAME:
        return _BY_NAME[rule].label
    return "has " + rule.removeprefix("missing_").replace("_", " ")


def rules_for(persona: Persona | Style) -> list[str]:
    """The rule names a persona's style can report, in report order."""
    style = persona.style if isinstance(persona, Persona) else persona
    names: list[str] = []
    for rule in RULES:
        if rule.applies(style):
            names += [f"missing_{r.name}" for r in style.require] if rule.name == "missing_pattern" else [rule.name]
    return names


def story_due(persona: Persona, cards: list | None) -> bool | None:
    """`check_reply`'s `story` for a reply grounded in `cards`: a story-telling persona with a bank owes one when a
    card fitted and none when none did; None (no cards: no bank, or asked without it) leaves it to the style."""
    return bool(cards) if cards is not None and persona.knowledge and persona.style.story else None


def check_reply(reply: str, persona: Persona | Style, finish_reason: str | None = None,
                story: bool | None = None, asked: str = "") -> list[Violation]:
    """Check `reply` against the persona's style; an empty list means it complies.

    `finish_reason` (from `ReplyStats`) adds `not_ended` when the reply was cut at max_new_tokens.
    `story` overrides whether a story is due (False: no knowledge card fitted, so counsel only).
    `asked` is the user's message: the words it uses are not leaks when the reply repeats them.
    """
    style = persona.style if isinstance(persona, Persona) else persona
    if story is not None:
        style = style.model_copy(update={"story": story})
    text = reply.strip()
    if not text:
        return [Violation("empty_reply", "the reply is empty")]
    r = _Reply(text, style, persona if isinstance(persona, Persona) else None, finish_reason, asked)
    return [v for rule in RULES if rule.applies(style) for v in rule.check(r)]


def badge(violations: list[Violation]) -> str:
    """A one-line Markdown summary for the UI."""
    if not violations:
        return "✅ style: all rules met"
    return "⚠️ style: " + "; ".join(str(v) for v in violations)
