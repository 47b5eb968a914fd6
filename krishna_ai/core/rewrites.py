"""Checks for a persona that rewrites the user's own text (PET's "Improved prompt:"): does the rewrite keep
the user's task, and does it state two different values for one thing?

A 270M model asked to improve "Give me a 30-minute workout plan" wrote "... Keep it under 15 minutes";
asked "What can I bake without eggs?" it wrote "Bake 4 eggs in a pan". No style rule sees either: both
replies have their "Improved prompt:" line. These two checks do, by rule, so `eval` can count them; what
they cannot judge (is the rewrite *better*?) is left to blind grading (`training/grading.py`).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                 "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30,
                 "forty": 40, "fifty": 50, "sixty": 60, "ninety": 90, "hundred": 100}
_UNITS = ["second", "minute", "min", "hour", "hr", "day", "week", "month", "year", "word", "line", "sentence",
          "paragraph", "page", "slide", "point", "bullet", "item", "step", "tip", "idea", "question", "example",
          "km", "kilometre", "kilometer", "mile", "syllable", "character", "verse", "stanza", "chapter", "scene",
          "course", "dish", "serving", "guest", "people", "person", "column", "row", "option", "variation"]
_QUANTITY = re.compile(
    r"(?i)(?<![\w.])(\d+(?:\.\d+)?(?:\s*(?:-|–|to)\s*\d+(?:\.\d+)?)?|" + "|".join(_NUMBER_WORDS) + r")"
    r"(?:\s*-\s*|\s+)(?:\w+\s+)?(" + "|".join(_UNITS) + r")(?:e?s)?\b")
"""A number (or range) and the unit it counts, with at most one word between ("5 key findings")."""
_THINGS = {"year", "people", "guest", "km", "mile"}
"""Units that count things the prompt is about (ages, guests, distances), which may rightly differ; a length
or a duration of the asked output may not ("300 words … under 150 words")."""
_SCOPED = re.compile(r"(?i)\b(?:each|per|every)\s+(?:\w+\s+){0,2}$")
"""Words just before a quantity that make it a part's ("each point under 30 words"), not the whole's."""
_SCOPED_AFTER = re.compile(r"(?i)^\s*(?:each|per|apiece|at a time|a day|a week|a month)\b")
_QUOTED = re.compile(r"[\"“”]([^\"“”]{8,})[\"“”]")
_PLACEHOLDER = re.compile(r"\[[^\]]*\]")
_WORD = re.compile(r"[a-z0-9]+")
_KEEP = {"no", "not", "without", "never", "only", "except", "nor"}
"""Negations a rewrite must keep: "without eggs" rewritten as "with eggs" is another task."""
_META = {"prompt", "prompts", "improve", "improved", "rewrite", "better", "help", "please", "fix", "usable",
         "chatbot", "chatgpt", "paste", "make", "it", "this", "these", "that", "want", "need", "can", "could",
         "would", "should", "how", "me", "my", "i", "you", "your", "answer", "answers", "gives", "give", "get",
         "useless", "generic", "realistic", "students", "will", "into", "so", "is", "be", "a", "an", "the", "of",
         "to", "for", "and", "or", "in", "on", "at", "with", "from", "about", "what", "why", "do", "does",
         "there", "here", "some", "any", "are", "am", "was", "up", "by", "as", "s", "t", "lists", "list",
         "whose", "which", "who"}
"""Words of a request *about* a prompt ("Please improve this prompt: ...") and words that carry no task."""


def improved_part(reply: str, label: str) -> str | None:
    """The rewrite: the text after the last line starting with `label` ("Improved prompt:"), None if none."""
    found = list(re.finditer(rf"(?im)^\W*{re.escape(label)}\W*:\s*", reply))
    return reply[found[-1].end():].strip() if found else None


def task_of(question: str) -> str:
    """The user's task: the quoted prompt when the message wraps one ("Improve this: \"...\""), else the
    message itself."""
    quoted = _QUOTED.findall(question)
    return max(quoted, key=len) if quoted else question


@cache
def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


@cache
def _stem(word: str) -> str:
    return str(_stemmer().stemWord(word))


@cache
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return frozenset(STOPWORDS_EN_PLUS) | _META


def _content(text: str, placeholders: bool = False) -> list[str]:
    """The stems of `text`'s content words, in order: negations and numbers kept, words of a request about a
    prompt dropped; a [placeholder]'s words only with `placeholders` (the user's "[text]" is no task word, a
    rewrite's "[customer's name]" keeps "customer")."""
    text = re.sub(r"'s\b", "", text.lower().replace("’", "'"))
    if not placeholders:
        text = _PLACEHOLDER.sub(" ", text)
    words = [w for w in _WORD.findall(text)
             if w in _KEEP or w.isdigit() or (w not in _stopwords() and len(w) > 1)]
    return [_stem(w) for w in words]


def _negated(words: list[str]) -> set[tuple[str, str]]:
    """(negation, the content word after it): "without eggs" → ("without", "egg")."""
    return {(w, nxt) for w, nxt in zip(words, words[1:], strict=False) if w in _KEEP and nxt not in _KEEP}


def keeps_task(question: str, rewrite: str) -> tuple[bool, list[str]]:
    """(kept, missing): every content word of the user's task (its negations and numbers included) is in
    the rewrite, by stem; one may be missing from a task of eight or more."""
    task = _content(task_of(question))
    wanted = list(dict.fromkeys(w for w in task if w not in _KEEP))
    words = _content(rewrite, placeholders=True)
    missing = [w for w in wanted if w not in set(words)]
    missing += [" ".join(pair) for pair in sorted(_negated(task) - _negated(words))]
    kept = not missing or (len(wanted) >= 8 and len(missing) == 1 and " " not in missing[0])
    return kept, missing


def _value(number: str) -> str:
    n = number.lower()
    n = re.sub(r"\s*(?:–|to)\s*", "-", re.sub(r"\s*-\s*", "-", n))
    return str(_NUMBER_WORDS.get(n, n))


def _unit(word: str) -> str:
    w = word.lower()
    return {"min": "minute", "hr": "hour", "kilometre": "km", "kilometer": "km", "person": "people",
            "bullet": "point"}.get(w, w)


def _quantities(text: str) -> list[tuple[str, str, bool]]:
    """(unit, value, scoped) for each quantity: scoped ones count a part ("each step in 2 sentences")."""
    return [(_unit(m.group(2)), _value(m.group(1)),
             bool(_SCOPED.search(text[:m.start()]) or _SCOPED_AFTER.search(text[m.end():])))
            for m in _QUANTITY.finditer(text)]


def stated_quantities(text: str) -> list[tuple[str, str]]:
    """(unit, value) of each quantity `text` states ("300 words" → ("word", "300"))."""
    return [(unit, value) for unit, value, _ in _quantities(text)]


def contradictions(question: str, rewrite: str) -> list[str]:
    """Two different values for one thing: the rewrite changes a quantity the user gave ("30-minute" →
    "under 15 minutes"), or states two for the same unit where neither counts a part ("a 30-day plan …
    over 14 days")."""
    found = []
    mine: dict[str, set[str]] = {}
    for unit, value, _ in _quantities(task_of(question)):
        mine.setdefault(unit, set()).add(value)
    whole: dict[str, set[str]] = {}
    changed = set()
    for unit, value, scoped in _quantities(rewrite):
        if unit in mine and value not in mine[unit] and not scoped:
            found.append(f"{value} {unit}(s) where the user asked for {' or '.join(sorted(mine[unit]))}")
            changed.add(unit)
        if not scoped and unit not in _THINGS:
            whole.setdefault(unit, set()).add(value)
    found += [f"{' and '.join(sorted(values))} {unit}(s) for one thing" for unit, values in whole.items()
              if len(values) > 1 and unit not in changed and not values <= mine.get(unit, set())]
    return found  # (two values the user gave themselves, "1 hour on weekdays and 3 at weekends", are no change)
