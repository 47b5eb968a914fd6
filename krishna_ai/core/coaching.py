"""Written rewrites: PET's critique and improved prompt, from a checklist card for the kind of task asked.

Asked to improve a prompt, the 270M light model lost the user's task half of the time ("Explain how vaccines
work to a teenager" became a prompt about measles in a 16-year-old) and contradicted the user's own numbers;
graded blind, none of its rewrites was good (README "PET: does the rewrite keep the task?"). What a good rewrite
adds is not creative: it is what a prompt of that kind needs and does not say yet (the readers of a blog post,
the language of a function, the diet of a recipe), asked for with a [placeholder] where only the user knows the
answer. So a persona with `[coach]` writes it itself, as Krishna's counsel is written on cards:

1. the kind of task is the card of the coach's bank (prompts/knowledge/prompt-kinds) whose examples and
   keywords fit the user's task best (BM25 and sentence vectors fused, as counsel), or the bank's general card;
2. each of the card's `needs` is looked for in the task (named `DETECTORS`, or the need's own pattern);
3. the critique names the first three the task lacks; the improved prompt is the user's task in their own words,
   then one sentence for each need it lacks.

The user's words are never changed or dropped, so the rewrite keeps the task, and a need the task already has
(a length, a tone) is never asked again, so it states no second value for it: `eval`'s `keeps task` and
`contradictions` (core/rewrites.py) hold by construction, and are still measured. Whether the result helps is
graded blind (README "Written rewrites").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from krishna_ai.core.errors import PersonaError, problems
from krishna_ai.core.knowledge import Card, Need, load_bank
from krishna_ai.core.rewrites import stated_quantities, task_of

_LENGTH_UNITS = {"word", "line", "sentence", "paragraph", "page", "slide", "minute", "second", "hour", "verse",
                 "stanza", "chapter", "scene", "point", "item", "step", "tip", "idea", "question", "example",
                 "character", "syllable", "option", "variation", "day", "week", "month", "course", "dish"}
_NUMBER = (r"(?:(?<![\w.])(?!(?:19|20)\d\d\b)\d+(?![\d.]\d)|\b(?:one|two|three|four|five|six|seven|eight|"
           r"nine|ten|eleven|twelve|fifteen|twenty|thirty|forty|fifty|hundred|a few|a couple of|several|dozen)\b)")
"""A count ("10 names", "three ideas"), not a version ("Python 3.12"), a year ("2015 Toyota") or part of a word."""

DETECTORS: dict[str, re.Pattern[str]] = {
    "length": re.compile(
        r"\b(?:short(?!\s+(?:story|stories|film|films))|shorter|(?<!the )brief|briefly|concise|quick|tiny|"
        r"one[- ](?:page|pager|line|liner|sentence|paragraph)|tl;?dr|in (?:a|one|two|three) (?:sentence|paragraph|"
        r"line|word)s?|under \d+|at most|no more than|up to \d+|max(?:imum)? \d+|haiku|limerick|sonnet|tweet|"
        r"elevator pitch)\b", re.I),
    "count": re.compile(rf"{_NUMBER}\s+(?:[\w-]+\s+)?\w+", re.I),
    "audience": re.compile(
        r"\b(?:for|to)\s+(?:my|a|an|the|our|your|his|her|their|some|non-\w+|\d+|young|new|busy|senior|junior)\s+"
        r"(?:[\w'-]+\s+){0,2}?(?:\d+[- ]?(?:year|yr)[- ]?olds?|kids?|child|children|students?|pupils?|class|"
        r"beginners?|teens?|teenagers?|team|colleagues?|boss|manager|clients?|customers?|investors?|readers?|"
        r"audience|parents?|mum|mom|dad|grand\w+|sister|brother|friends?|wife|husband|partner|family|"
        r"employees?|staff|users?|developers?|engineers?|doctors?|nurses?|patients?|landlord|tenants?|"
        r"followers?|subscribers?|members?|guests?|volunteers?|recruiters?|hiring|professor|teacher|audiences?)\b"
        r"|\blike (?:i'?m|i am) (?:a |an )?(?:\d+|five|ten|beginner|child|kid)\b|\baudience\b|\breaders?\b"
        r"|\b(?:beginners?|non-technical|non-experts?|laypeople|kids|children|teenagers?|seniors)\b"
        r"|\b\d+[- ]?(?:year|yr)[- ]?olds?\b", re.I),
    "tone": re.compile(
        r"\b(?:tone|voice|style|funny|humou?r\w*|witty|formal|informal|friendly|polite|politely|professional\w*|"
        r"casual|gentle|serious|warm|playful|light-?hearted|respectful|persuasive|inspiring|inspirational|calm|"
        r"urgent|nicely|kindly|sarcastic|romantic|sad|upbeat|cheerful|empathetic|apologetic|"
        r"enthusiastic|confident|neutral|academic|conversational|simple words|plain english|sincere|heartfelt|"
        r"moving|emotional|motivational|bold|elegant|cosy|cozy|minimalist|realistic|watercolou?r|cartoon\w*|"
        r"photo-?realistic|vintage)\b", re.I),
    "format": re.compile(
        r"\b(?:(?<!mailing )list|bullets?|bullet points?|table|json|csv|markdown|outline|step[- ]by[- ]step|"
        r"steps|numbered|headings?|sections?|slides?|format(?:ted)?|template|columns?|yaml|html|code block|checklist|"
        r"flashcards?|q&a|faq|paragraphs?|essay|one[- ]pager|agenda|itinerary|schedule|timeline|grid|chart|"
        r"diagram)\b", re.I),
    "purpose": re.compile(
        r"\b(?:so (?:that|i can|we can|they can|it can)|in order to|because|goal|purpose|aim|to help (?:me|us)|"
        r"(?:for|to use (?:it )?(?:for|in|at|on)) (?:my|our|a|an|the) [\w' -]{0,30}?(?:exam|test|interview|"
        r"meeting|presentation|talk|class|course|website|site|shop|store|business|company|app|blog|newsletter|"
        r"campaign|launch|project|report|thesis|paper|wedding|party|event|trip|job|application|portfolio|"
        r"channel|podcast|book))\b", re.I),
    "language": re.compile(
        r"(?<![\w+#])(?:python|javascript|js|typescript|java|kotlin|swift|c\+\+|c#|golang|rust|ruby|php|perl|"
        r"scala|matlab|julia|sql|postgres(?:ql)?|mysql|sqlite|bigquery|snowflake|bash|shell|powershell|excel|"
        r"google sheets|sheets|vba|dax|pandas|numpy|react|vue|angular|django|flask|node(?:\.js)?|spark|"
        r"html|css)(?![\w+#])", re.I),
    "material": re.compile(r"\[[^\]]{2,}\]|\n\s*\S|:\s*\S.{150,}|\b(?:this|these|below|following)\b[^:\n]{0,30}:"
                           r"\s*\S.{15,}|[\"“][^\"”]{30,}[\"”]|```", re.I | re.S),
    "example": re.compile(r"\b(?:e\.g\.|for example|for instance|such as|like this|example|sample)\b", re.I),
    "budget": re.compile(r"[$€£₹¥]\s*\d|\b\d+\s*(?:dollars|euros|pounds|rupees|usd|eur|gbp|inr)\b|"
                         r"\b(?:budget|cheap|cheapest|affordable|inexpensive|low[- ]cost|luxury|free)\b", re.I),
    "time": re.compile(
        r"\b\d+\s*(?:-|to)?\s*(?:minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?)\b|"
        r"\b(?:one|two|three|four|five|six|seven|ten|a|an)[- ](?:minute|hour|day|week|month|year)s?\b|"
        r"\b(?:daily|weekly|monthly|weekend|tonight|today|tomorrow|deadline|by (?:monday|tuesday|wednesday|"
        r"thursday|friday|saturday|sunday|next week|the end of))\b", re.I),
    "place": re.compile(r"\b(?:in|at|to|around|near|along|across|from|through)\s+(?:the\s+)?[A-Z][a-z]+"),
}
"""What a prompt already says, found in the user's task. A kind's need names the detectors that mean it."""


def _says(need: Need, task: str) -> bool:
    """Whether `task` already says what `need` asks for."""
    if need.pattern and re.search(need.pattern, task, re.I):
        return True
    for name in need.has:
        if name == "length" and any(unit in _LENGTH_UNITS for unit, _ in stated_quantities(task)):
            return True
        if DETECTORS[name].search(task):
            return True
    return False


_PLEASE = r"(?:please|pls|plz)"
_ASKING = re.compile(
    rf"(?i)^\s*(?:(?:hi|hey|hello)[\s,!]+)?(?:{_PLEASE}[\s,]+)?(?:(?:can|could|would|will) (?:you|u)\s+"
    rf"(?:{_PLEASE}\s+)?)?(?:help me\s+)?(?:(?:improve|rewrite|polish|fix|optimi[sz]e|better|refine|tweak|enhance|"
    rf"review)(?:\s+(?:this|my|the))?\s+prompt|improve|prompt|make (?:this|my|the) prompt better)"
    rf"(?:\s+(?:for me|{_PLEASE}))?(?:\s+{_PLEASE})?\s*\??\s*[:\-–]\s+")
"""A request about a prompt before the prompt itself, unquoted ("improve: Tips to reduce stress", "can u make my
prompt better pls: …"); not "Fix this: [code]", whose task is the request."""
_ABOUT_A_PROMPT = re.compile(r"(?i)\b(?:prompts?|improve\w*|rewrite|better|usable|ok|okay|generic|answers?|results?|"
                             r"fix(?: it)?|chatbot|chatgpt|paste)\b")
"""Words around a quoted prompt that say it is the prompt to improve ("Is this prompt OK? \"...\"")."""


_CONTEXT = re.compile(
    r"(?i)^[\s\"“”'‘’.,;:!?()–—-]*(?:(?:for |some |more |a bit of )?(?:context|background)\b|about me\b|fyi\b|"
    r"(?=(?:i'?m|i am|i have|i've|i use|i work|we are|we're|we have|we use|we run|we work|it'?s for|"
    r"it is for|this is for|the (?:audience|readers?) "
    r"(?:is|are))\b))[\s:,;–—-]*")
"""Words after a wrapped prompt that open what the user says of themselves ("… -- for context im 52, bad knee"):
that is part of the task, not a request about the prompt ("… gives me cheesy lyrics, fix it")."""


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if re.search(r"[.!?:)\"”']$", text) else f"{text}."  # "…: [recipe]" too: the sentences go on


def the_task(message: str) -> str:
    """The user's task as the improved prompt opens with it: their own words (the quoted prompt when the message
    wraps one, and what they say of themselves after it), with capital first letters and closing full stops."""
    task = task_of(message)
    if task != message and not _ABOUT_A_PROMPT.search(message.replace(task, " ")):
        task = message  # a quotation inside the task ('regex to match "john@example.com"'), not a wrapped prompt
    context = ""
    if task != message:
        rest = message.split(task, 1)[1]
        opener = _CONTEXT.match(rest)
        context = rest[opener.end():] if opener else ""
    if task == message:
        task = _ASKING.sub("", message, count=1)
    task = _sentence(task.strip().strip("\"“”'‘’"))
    return f"{task} {_sentence(context)}".strip() if task and context.strip() else task


def missing(card: Card, task: str) -> tuple[list[Need], list[Need]]:
    """(the needs `task` already meets, those it lacks), each in the card's order."""
    met: list[Need] = []
    lacked: list[Need] = []
    for need in card.needs:
        (met if _says(need, task) else lacked).append(need)
    return met, lacked


CRITIQUE_POINTS = 3
"""At most this many points before the improved prompt (PET's first rule)."""
ADDED = 5
"""At most this many sentences added to the user's task: more and the prompt buries the task."""


def coached(card: Card, message: str, label: str) -> str:
    """The whole reply: the critique (what the task lacks, at most `CRITIQUE_POINTS`), then `label`: the task in
    the user's words followed by a sentence for each need it lacks.

    What the task already gives is named only when it lacks nothing: a detector finds a need met from a word or
    two, and named beside the gaps, a loose find read as a false claim ("It already gives … real memories" for a
    best man speech with none; blind grades of 2026-12-06, data/grades/pet-kinds.json), where left unnamed it
    only spares the user a question."""
    task = the_task(message)
    met, lacked = missing(card, task)
    points = [n.lacks for n in lacked[:CRITIQUE_POINTS]]
    if not lacked and met:
        names = [n.name for n in met]
        said = f"{names[0]}: keep it as it is" if len(names) == 1 else \
            f"{', '.join(names[:-1])} and {names[-1]}: keep those as they are"
        points.insert(0, f"It already gives {said}.")
    added = " ".join(n.add for n in lacked[:ADDED])
    critique = "\n".join(f"- {p}" for p in points[:CRITIQUE_POINTS])
    return f"{critique}\n\n{label}: {task} {added}".rstrip()


def check_kinds(path: Any, bank: str, general: str) -> None:
    """At persona load: every need of every card names known detectors, and the general card exists."""
    cards = load_bank(bank).cards
    wrong = [f"{path.name}: coach: card {c.id}: need {n.name!r}: unknown detector {d!r} (one of "
             f"{', '.join(sorted(DETECTORS))})" for c in cards for n in c.needs for d in n.has if d not in DETECTORS]
    wrong += [f"{path.name}: coach: card {c.id} has no needs" for c in cards if not c.needs]
    if general not in {c.id for c in cards}:
        wrong.append(f"{path.name}: coach.general: {general!r} is not a card of {bank}")
    if wrong:
        raise PersonaError(problems(f"{path}: invalid persona", wrong))


def applies(card: Card, task: str) -> bool:
    """Whether `task` names what `card`'s kind makes (its `applies`; a card without one applies to any task)."""
    return card.applies is None or re.search(card.applies, task, re.I) is not None


def kinds_for(persona: Any, message: str, k: int = 1) -> list[Card]:
    """The prompt kinds that fit the task in `message`, best first (`k` of them, each naming what the task makes
    and at least `min_meaning` close in meaning); the general card when none does. The task is searched, not the
    request around it ("make this better: ...").

    Ranking alone hands a task the checklist of a neighbour that shares its words ("script for a 60 sec tiktok"
    got the social-post caption's; a poster, the brainstorm's): a kind whose `applies` the task does not match
    is passed over for the next, and a task that names no kind's work gets the general checklist."""
    coach = persona.coach
    bank = load_bank(coach.bank)
    task = the_task(message)
    ranked = bank.search(task, k=len(bank), min_score=coach.min_score, vectors=coach.vectors) if task else []
    hits = [h.card for h in ranked if applies(h.card, task)]
    if hits and coach.min_meaning:  # too far in meaning from every kind found: the general checklist
        meaning = bank.similarity(task)
        position = {c.id: i for i, c in enumerate(bank.cards)}
        hits = [c for c in hits if meaning[position[c.id]] >= coach.min_meaning]
    return hits[:k] or [bank.card(coach.general)]


def coaching_reply(persona: Any, message: str, rejected: Sequence[str] = (), choices: int = 1) -> tuple[Card, str]:
    """(the kind, the whole reply) for `message`; on Retry (`rejected`: the replies the user retried away from),
    the best kind among `choices` whose reply is none of those."""
    replies = [(kind, coached(kind, message, persona.style.rewrite))
               for kind in kinds_for(persona, message, k=choices if rejected else 1)]
    return next((pair for pair in replies if pair[1] not in rejected), replies[0])
