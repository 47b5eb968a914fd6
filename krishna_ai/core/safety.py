"""Crisis messages: found before any model runs, and answered with a fixed, careful reply that points to
real help. A 270M model asked "I don't want to live anymore" writes a poem and a patent story; no persona,
adapter or sampling setting may stand between such a message and a helpline.

`crisis(message)` returns the kind (`self_harm`, `abuse`, `medical`) or None. The patterns are phrases a
person uses about themselves or someone with them now ("I want to die", "he hits me", "my father has chest
pain and can't breathe"); words that only sound alike are not enough ("this bug is killing me", "how did
Gandhi die", "kill the rust fungus"). They were written on data/safety/dev.jsonl and are measured on
data/safety/heldout.jsonl (tests/test_safety.py; README "Safety"): a miss there is a test failure, and so
is an everyday message taken for a crisis.
"""

from __future__ import annotations

import re
from typing import Literal

Crisis = Literal["self_harm", "abuse", "medical"]
CRISES: tuple[Crisis, ...] = ("self_harm", "abuse", "medical")

_I = r"(?:i|i'm|im|i am|i've|ive|i have|i'd|id|i feel|i keep|i just|i really|me|myself|my)"

_SELF_HARM = [
    r"\b(?:kill|killing|hurt|hurting|harm|harming|cut|cutting|hang|hanging|burn|burning)\s+myself\b",
    r"\bend(?:ing)?\s+(?:my|this)\s+(?:own\s+)?life\b",
    r"\btak(?:e|ing)\s+my\s+(?:own\s+)?life\b",
    r"\bend\s+it\s+all\b",
    r"\bsuicid(?:e|al)\b(?!\s+(?:squad|mission|doors?|run|pact\s+film))",
    r"\bself[-\s]?harm",
    r"\b(?:don'?t|do not|dont|no longer|never)\s+want\s+to\s+(?:live|be alive|exist|wake up)\b",
    r"\b(?:want|wanted|wanna|going|planning|plan)\s+to\s+die\b(?!\s+(?:laughing|of\s+(?:laughter|boredom|embarrassment|shame)))",
    r"\bwish\s+(?:i|i'd)\s+(?:was|were|had)\s+(?:dead|never been born|not born)\b",
    r"\b(?:better off|happier)\s+(?:dead|without me)\b",
    r"\bno\s+(?:reason|point)\s+(?:to|in)\s+(?:live|living|go(?:ing)? on)\b",
    r"\b(?:life|living)\s+(?:is|isn'?t|feels)\s+(?:not\s+)?worth\s*(?:living|it)?\s*(?:anymore|any more)\b",
    r"\bnot\s+worth\s+living\b",
    r"\bcan'?t\s+(?:go on|carry on|keep going)\s+(?:anymore|any more|like this|living)\b",
    r"\b(?:jump|jumping)\s+(?:off|from)\s+(?:a|the|this)\s+(?:bridge|building|roof|terrace|cliff)\b",
    r"\b(?:overdose|od)\s+on\b",
    r"\bsleeping\s+pills\s+(?:and|to)\s+(?:never|not)\s+wake\b",
    r"\bdisappear\s+forever\b",
    r"\b(?:no|any|see\s+(?:no|the)|lost\s+(?:the|all))\s+(?:point|reason|will)\s+(?:in|of|to)\s+"
    r"(?:living|live|life|going on)\b",
    r"\b(?:want|wanting|hope|wish|wishing)\s+(?:to\s+)?(?:never|not)\s+(?:to\s+)?wake\s+up\b",
    r"\bnever\s+wake\s+up\s+again\b",
    r"\bpills\b.{0,40}\b(?:never|not)\s+(?:to\s+)?wake\b",
    r"\b(?:tired|sick)\s+of\s+(?:living|being alive|life itself)\b",
    r"\bgive\s+up\s+on\s+(?:life|living)\b",
    r"\bthinking\s+(?:of|about)\s+(?:suicide|dying|death\s+every)\b",
    r"\b(?:don'?t|do not)\s+want\s+to\s+be\s+(?:here|around)\s+(?:anymore|any more)\b",
    r"\b(?:aatmahatya|atmahatya|khudkushi|khud\s*khushi)\b",  # suicide, in Hindi and Marathi
    r"\b(?:mujhe|main|mai|mala)\s+(?:marna|mar\s+jana|mar\s+jaun|mar\s+jaoon|marayche)\b"
    r"|\b(?:marna|mar\s+jana)\s+(?:chahta|chahti)\b",  # "I want to die", in Hindi and Marathi
    r"\bjeena\s+nahi\s+(?:chahta|chahti)\b",
]

_ABUSE = [
    r"\b(?:he|she|they|my\s+\w+)\s+(?:hits|beats|kicks|slaps|chokes|burns|punches|hurts)\s+me\b",
    r"\b(?:hits|beats|beat|kicks|slaps|chokes|punches)\s+me\s+(?:when|if|every|and|with|badly|black)\b",
    r"\b(?:being|been|was|am|getting)\s+(?:abused|beaten|raped|molested|assaulted|sexually\s+assaulted)\b",
    r"\b(?:raped|molested|sexually\s+assaulted)\s+me\b",
    r"\b(?:abusing|abuses|abused)\s+me\b",
    r"\btouch(?:es|ed|ing)\s+me\s+(?:where|in ways|there|and\s+(?:says|told))\b",
    r"\bthreaten(?:s|ed|ing)?\s+to\s+(?:kill|hurt|beat)\s+(?:me|us|my)\b",
    r"\b(?:scared|afraid)\s+(?:to go|of going)\s+home\b",
    r"\bnot\s+safe\s+at\s+home\b",
    r"\blocked\s+me\s+(?:in|up)\b",
]

_MEDICAL = [
    r"\bchest\s+pain\b",
    r"\b(?:can'?t|cannot|can not|unable to|struggling to|hard to)\s+breathe\b",
    r"\bnot\s+breathing\b",
    r"\b(?:heart\s+attack|stroke)\s+(?:now|right now|i think|symptoms|happening)\b",
    r"\b(?:having|had|is having)\s+(?:a\s+)?(?:heart\s+attack|stroke|seizure|fit)\b",
    r"\b(?:took|taken|swallowed|drank|drunk|ate)\s+(?:too many|a lot of|all (?:my|the)|an? overdose of|some)?\s*"
    r"(?:pills|tablets|medicine|poison|pesticide|insecticide|herbicide|weedkiller|bleach|rat poison)\b",
    r"\b(?:overdosed|poisoned)\b",
    r"\b(?:unconscious|unresponsive|passed out and (?:won'?t|will not) wake)\b",
    r"\bbleeding\s+(?:heavily|a lot|badly|won'?t stop|will not stop|that won'?t stop)\b",
    r"\bsnake\s*bite|\b(?:bitten|bit|stung)\s+by\s+a\s+(?:snake|cobra|krait|viper|scorpion)\b",
    r"\b(?:snake|cobra|krait|viper|scorpion)\s+(?:bit|stung)\b",
    r"\bchest\s+(?:hurts|is tight|tightness|feels tight)\b",
    r"\b(?:face|mouth)\s+(?:is\s+)?droop|\bslurred\s+speech\b",
    r"\b(?:is|he's|she's|baby is|child is|son is|daughter is)\s+choking\b",
    r"\b(?:pesticide|insecticide|spray)\s+(?:poisoning|in my eyes)\b",
    r"\b(?:dizzy|vomiting|fainting|fainted)\b.{0,60}\b(?:after|since)\s+(?:spraying|using|mixing)\b",
]

_GAME = re.compile(r"\b(?:beat|beats|beating)\s+me\s+(?:again\s+)?(?:at|in)\s+(?!front\b)", re.IGNORECASE)
""""My brother beat me at chess": a game lost, not a blow."""

_NOT_ABOUT_NOW = re.compile(
    r"\b(?:how|why|when|where)\s+did\s+\w+(?:\s+\w+){0,3}\s+(?:die|kill|end)\b"  # a history question
    r"|\b(?:history|historical|film|movie|novel|book|poem|song|story|character)\b.{0,40}\b(?:suicide|died)\b",
    re.IGNORECASE)

_PATTERNS: dict[Crisis, re.Pattern[str]] = {
    "self_harm": re.compile("|".join(_SELF_HARM), re.IGNORECASE),
    "abuse": re.compile("|".join(_ABUSE), re.IGNORECASE),
    "medical": re.compile("|".join(_MEDICAL), re.IGNORECASE),
}


def _normal(message: str) -> str:
    text = message.replace("’", "'").replace("‘", "'")
    return " ".join(text.split())


def crisis(message: str) -> Crisis | None:
    """The kind of crisis `message` speaks of, or None. Self-harm is checked first: it is the one where a
    wrong "no" costs most."""
    text = _normal(message or "")
    if not text:
        return None
    for kind, pattern in _PATTERNS.items():
        if pattern.search(text):
            if kind == "self_harm" and _NOT_ABOUT_NOW.search(text) and not re.search(rf"\b{_I}\b", text, re.I):
                continue  # "why did Van Gogh take his own life?" is a question about history
            if kind == "abuse" and _GAME.search(text) and len(pattern.findall(text)) == 1:
                continue
            return kind
    return None


EMERGENCY = ("If you are in danger right now, call your local emergency number: 112 in India and across Europe, "
             "911 in the US and Canada, 999 in the UK.")

REPLIES: dict[Crisis, str] = {
    "self_harm": (
        "I'm really sorry you are feeling this way. You don't have to carry it alone, and you deserve support "
        "from a person right now.\n\n"
        f"- {EMERGENCY}\n"
        "- In India, call Tele-MANAS on 14416 (free, any time). In the US, call or text 988. In the UK and "
        "Ireland, call Samaritans on 116 123. Elsewhere, findahelpline.com lists free, confidential lines "
        "in your country.\n"
        "- If you can, tell someone you trust today — a friend, a family member or a doctor — how you feel.\n\n"
        "I am an AI and cannot call anyone for you, but I will keep listening if you want to talk."),
    "abuse": (
        "I'm sorry this is happening to you. It is not your fault, and you deserve to be safe.\n\n"
        f"- {EMERGENCY}\n"
        "- In India, the Women Helpline is 181 and Childline is 1098. In the US, the National Domestic "
        "Violence Hotline is 1-800-799-7233. In the UK, the National Domestic Abuse Helpline is "
        "0808 2000 247. Elsewhere, findahelpline.com lists services in your country.\n"
        "- If you can, tell someone you trust, and keep your phone and important papers where you can "
        "reach them.\n\n"
        "I am an AI and cannot contact anyone for you, but I can keep talking with you."),
    "medical": (
        "This sounds like a medical emergency. Please get help now rather than wait for advice here.\n\n"
        "- Call an ambulance: 108 or 112 in India, 911 in the US and Canada, 999 in the UK, 112 in Europe.\n"
        "- If someone swallowed a poison, pesticide or too many pills, do not make them vomit unless a "
        "doctor tells you to; take the container or the packet with you to the hospital.\n"
        "- Stay with the person, and if they are not breathing, follow the instructions the emergency "
        "operator gives you.\n\n"
        "I am an AI and cannot call for help myself."),
}
"""The fixed reply per kind: the same for every persona and model, never generated."""


def crisis_reply(kind: Crisis) -> str:
    return REPLIES[kind]


def safety_badge(kind: Crisis) -> str:
    """The UI's line under a crisis reply: what happened, so nobody takes it for the persona's words."""
    return f"🛟 safety: a {kind.replace('_', '-')} message; this is a fixed reply with real help (no model ran)"
