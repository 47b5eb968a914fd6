"""The facts a reply states, compared with its sources: the numbers and proper names in a text (`facts_of`),
and those of a reply that no card or question supports (`unsupported`: what `eval`'s faithful check counts)."""

from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z][A-Za-z'’.-]*[A-Za-z]|[A-Za-z]")
_NUMBER = re.compile(r"\b\d[\d,.]*\b")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n]|\s[-–—•*]|[\"“(])\s*$")
NAME_MAX_ZIPF = 3.5
"""A capitalised word that opens a sentence is a name only if it is rarer than this in English
(wordfreq's Zipf scale: "Choose" 4.9, "Scout" 4.0, "Rotate" 3.6 are words; "Surat" 2.9, "Kutch" 2.2 are
names). A single common-looking name opening a sentence ("Gandhi", 3.8) is missed; inside a sentence,
or before another capitalised word, every name is caught."""
NOT_NAMES = {"i", "i'm", "i've", "i'll", "i'd", "o", "oh"}


def facts_of(text: str) -> tuple[set[str], set[str]]:
    """(numbers, proper names) stated in `text`; names lower-cased. A capitalised word inside a sentence
    is a name; one that opens a sentence only when it is rare in English or the next word is capitalised
    too ("Thomas Edison")."""
    from wordfreq import zipf_frequency

    numbers = {n.strip(".,").replace(",", "") for n in _NUMBER.findall(text)}
    names: set[str] = set()
    words = list(_WORD.finditer(text))
    for i, m in enumerate(words):
        word = m.group(0).strip(".'’-")
        if not word or not word[0].isupper() or word.lower() in NOT_NAMES:
            continue
        if _SENTENCE_START.search(text[: m.start()]):
            nxt = words[i + 1] if i + 1 < len(words) else None
            joined = nxt is not None and nxt.group(0)[:1].isupper() and not text[m.end(): nxt.start()].strip()
            if not joined and ("-" in word or zipf_frequency(word.lower(), "en") >= NAME_MAX_ZIPF):
                continue
        names.add(word.lower())
    return {n for n in numbers if n}, names


def unsupported(reply_part: str, sources: list[str]) -> list[str]:
    """Every number and proper name in `reply_part` that none of `sources` states."""
    numbers, names = facts_of(reply_part)
    allowed = " ".join(sources)
    known_numbers = {n.strip(".,").replace(",", "") for n in _NUMBER.findall(allowed)}
    known_words = {w.lower().strip(".'’-") for w in _WORD.findall(allowed)}
    known_words |= {w.removesuffix("'s").removesuffix("’s") for w in known_words}
    missing = sorted(n for n in numbers if n not in known_numbers)
    missing += sorted(n for n in names if n.removesuffix("'s").removesuffix("’s") not in known_words)
    return missing
