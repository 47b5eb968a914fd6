"""Crisis messages: found before any model runs, and answered with a fixed, careful reply that points to
real help. A 270M model asked "I don't want to live anymore" writes a poem and a patent story; no persona,
adapter or sampling setting may stand between such a message and a helpline.

`crisis(message)` returns the kind (`self_harm`, `abuse`, `medical`) or None. The patterns are phrases a
person uses about themselves or someone with them now ("I want to die", "he hits me", "my father has chest
pain and can't breathe"); words that only sound alike are not enough ("this bug is killing me", "how did
Gandhi die", "kill the rust fungus"). They were written on data/safety/dev.jsonl and are measured on
data/safety/heldout.jsonl (tests/test_safety.py; README "Safety"): a miss there is a test failure, and so
is an everyday message taken for a crisis.

Patterns alone caught 13 of 55 crisis messages of a fresh blind set (data/safety/heldout2.jsonl, by a writer
who saw none of them): people say it in too many ways ("nobody would miss me", "I've saved my pills", "kms").
So every message the patterns do not decide is also judged by a model (`Net`): a multinomial logistic
regression over its TF-IDF words and word pairs beside its sentence vector (all-MiniLM-L6-v2,
`core/vectors.py`), fitted by `python -m krishna_ai safety fit` (krishna_ai/training/safety_fit.py) on the
labelled dev messages against everyday look-alikes and every persona's own questions, with a threshold that
flags a small share of everyday messages (`prompts/safety/crisis.json`; README "Crisis messages" has what it
catches on sets nobody fitted on). Without the vectors' model (it is in requirements.txt) only the patterns
judge, and a warning says so once.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal, cast

from krishna_ai.core.crisis_net import load_net, sentences
from krishna_ai.core.errors import ModelUnavailable, PersonaError
from krishna_ai.core.vectors import MODEL_NAME as MEANING_MODEL

log = logging.getLogger(__name__)

Crisis = Literal["self_harm", "abuse", "medical"]
CRISES: tuple[Crisis, ...] = ("self_harm", "abuse", "medical")

_I = r"(?:i|i'm|im|i am|i've|ive|i have|i'd|id|i feel|i keep|i just|i really|me|myself|my|we|we're|our|us)"

_WHO = (r"(?:he|she|they|who|warden|teacher|father|mother|dad|mom|mum|uncle|aunt|aunty|boss|owner|landlord|landowner|"
        r"employer|supervisor|manager|master|madam|brother|sister|son|daughter|husband|wife|partner|boyfriend|bf|"
        r"girlfriend|stepfather|stepmother|stepdad|stepmom|neighbou?r|in-laws?|\w+-in-law|sasubai|saasu|sasu|"
        r"grandfather|grandmother|principal|coach|agent|contractor|guard|seth|malik|sir)")
"""Who hurts or shuts someone in: a person, so "when sadness hits us" and "the rains locked us inside" are not."""

_SELF_HARM = [
    r"\b(?:kill|killing|hurt|hurting|harm|harming|cut|cutting|hang|hanging|burn|burning)\s+myself\b",
    # someone else means to, now: "she plans to kill herself on her birthday", "he says he'll hang himself"
    # (not "he cut himself with the sickle", nor a history or a novel: `_HISTORY_OR_FICTION`)
    r"\b(?:wants?|wanted|wanting|trying|tried|tries|plans?|planned|planning|going|threaten\w*|intends?|"
    r"thinking\s+(?:of|about)|talk\w*\s+(?:of|about)|(?:says?|said|told\s+\w+|texted|wrote)\s+(?:that\s+)?"
    r"(?:he|she|they)\s*(?:'ll|will|would|is\s+going|wants?)|(?:he|she|they)\s+is\s+about)\s+(?:to\s+)?"
    r"(?:kill|hurt|harm|cut|hang|end)(?:ing)?\s+(?:himself|herself|themselves|themself)\b",
    r"\bend(?:ing)?\s+(?:my|this)\s+(?:own\s+)?life\b",
    r"\btak(?:e|ing)\s+my\s+(?:own\s+)?life\b",
    r"\bend\s+it\s+all\b",
    r"\bsuicidal\b",
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
    r"\b(?:i'?m|i\s+am|i'?ve\s+been|i\s+have\s+been|i\s+keep|keep|been|always|constantly|start(?:ed)?)\s+thinking\s+"
    r"(?:of|about)\s+(?:suicide|dying|death\s+every|killing\s+myself)\b",
    r"\b(?:don'?t|do not)\s+want\s+to\s+be\s+(?:here|around)\s+(?:anymore|any more)\b",
    r"\b(?:aatmahatya|atmahatya|khudkushi|khud\s*khushi)\b",  # suicide, in Hindi and Marathi
    r"\b(?:mujhe|main|mai|mala)\s+(?:marna|mar\s+jana|mar\s+jaun|mar\s+jaoon|marayche)\b"
    r"|\b(?:marna|mar\s+jana)\s+(?:chahta|chahti)\b",  # "I want to die", in Hindi and Marathi
    r"\bjeena\s+nahi\s+(?:chahta|chahti)\b",
    # slang and euphemisms: "kms" (not "5 kms"), "unalive", "ctb", "sewerslide"
    r"(?<!\d)(?<!\d\s)\bkms\b(?!\s+(?:away|from|of|to|a\s+day|per|each|daily|long|on|in|today|yesterday|this|every)\b)",
    r"\bunaliv(?:e|ing)\s+(?:myself|me)\b|\bsewer\s*slide\b|\bctb\b",
    r"\b(?:no\s*one|nobody)\s+(?:would|will|'?d)\s+(?:even\s+)?(?:miss|notice|care)\b.{0,30}"
    r"\b(?:gone|dead|died|not here|"
    r"disappeared|killed)\b",
    r"\b(?:painless|easiest|quickest|best|fastest)\s+(?:way|ways|method)\s+to\s+(?:die|kill\s+myself|end\s+(?:it|my\s+life))\b",
    r"\b(?:lethal|fatal|deadly)\s+dose\b",
    r"\bhow\s+many\b.{0,40}\b(?:kill\s+(?:me|myself)|for\s+me\s+to\s+die|(?:i|me)\s+(?:to\s+)?die)\b",
    r"\b(?:wrote|written|writing|write|left)\s+(?:my\s+)?(?:goodbye|suicide)\s+(?:letters?|notes?|messages?)\b"
    r"|\bsuicide\s+note\b|\bthis\s+is\s+my\s+(?:last|final)\s+(?:message|goodbye|post)\b|\bmy\s+final\s+goodbye\b",
    r"\b(?:no|any)\s+(?:reason|point)\s+(?:to|in)\s+(?:keep(?:ing)?|stay(?:ing)?)\s+(?:living|alive|going)\b",
    r"\b(?:sleep|close\s+my\s+eyes)\s+(?:and|&)\s+(?:never|not)\s+(?:to\s+)?wake\b",
    r"\b(?:(?:saving|saved)\s+up|stockpil\w*|hoard\w*)\s+(?:all\s+)?(?:my\s+|the\s+)?"
    r"(?:pills|tablets|meds|sleeping pills)\b",
    r"\bend\s+(?:it|things|everything)\s+(?:tonight|today|now|soon|for good)\b",
    r"\b(?:done|finished)\s+with\s+(?:life|living|being alive)\b",
    r"\b(?:want|wanna|going)\s+to\s+(?:disappear|not\s+exist)\b(?!\s+(?:for\s+a|from\s+(?:social|the\s+internet)))",
    # cutting oneself, not an accident ("I cut my thigh on the barbed wire" is one)
    r"\b(?:i|i've|ive|i\s+have|i'm|im|i\s+am|i\s+keep|i\s+kept|i\s+just|i\s+started|i\s+want\s+to|i\s+wanna|been)\s+"
    r"(?:been\s+|started\s+)?(?:cutting|cut|slitting|slit|to\s+cut|to\s+slit)\s+my\s+(?:own\s+)?(?:arms?|wrists?|thighs?)\b"
    r"(?!\s+(?:on|in|with|while|by)\b)|\bslit(?:ting)?\s+my\s+wrists?\b",
    # a noose or rope made ready ("the rope is ready in the garage"; not the bundles' jute rope, nor a rat trap)
    r"\b(?:rope|noose)\s+(?:is\s+)?(?:ready|tied|hung|up)\s+(?:in|on|from|to)\s+(?:the\s+|my\s+)?"
    r"(?:garage|fan|ceiling|room|tree|beam|closet|cupboard|bathroom|hook|rafter)\b"
    r"|\b(?:made|tied|hung|making|tying)\s+(?:a|the|my)\s+noose\b(?!\s+(?:to|for)\s+(?:trap|catch|rats?|the\s+rats))",
    # to follow the dead: "my wife died in march and i'm going to join her" (not "join them at the memorial")
    r"^(?=.*\b(?:died|dead|passed\s+away|passed\s+on|death|funeral|grave|lost\s+(?:him|her|them))\b)"
    r".*\b(?:going|gonna|want|wanna|ready|plan\w*|time|soon)\s+(?:to\s+)?join\s+(?:her|him|them)\b"
    r"(?!\s+(?:at|for|in|on|to|with|and|after|tomorrow|tonight)\b)",
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
    r"\b(?:he|she|they|my\s+\w+)\s+(?:hit|kicked|slapped|punched|strangled|burned|burnt|whipped)\s+me\b"
    r"(?!\s+(?:up|off|out|back|in\s+the\s+(?:match|game|race)|at)\b)",
    r"\b(?:choked|choking|chokes|strangled|strangling|strangles)\s+me\b",
    r"\bpushed\s+me\s+(?:down\s+the\s+stairs|against\s+the\s+wall|to\s+the\s+(?:floor|ground))\b"
    r"|\bthrew\s+(?:\w+\s+){0,2}at\s+me\b|\bthrew\s+me\s+(?:against|down|on\s+the\s+floor|out\s+of)\b",
    r"\b(?:he|she|they|my\s+\w+)\s+(?:\w+\s+)?(?:touches|touched|keeps touching|kept touching)\s+me\b"
    r"(?!\s+(?:deeply|so|greatly|a lot|emotionally|with|by|in\s+a\s+good))",
    r"\b(?:photos|pictures|pics|nudes|videos)\b.{0,60}\b(?:keep|kept|keeping)\b.{0,20}\bsecret\b"
    r"|\b(?:keep|kept|keeping)\b.{0,20}\bsecret\b.{0,60}\b(?:photos|pictures|pics|nudes|touch\w*)\b",
    r"\b(?:touches|touched|touching)\s+my\s+(?:private|privates|body|chest|breasts)\b",
    # a person hurting others now: "the warden beats the junior boys", "he slaps my mother" (a game won: `_GAME`)
    rf"\b{_WHO}\s+(?:always\s+|still\s+|often\s+)?(?:beats|hits|slaps|kicks|whips|canes|burns|punches|chokes)\s+"
    r"(?:the\s+|his\s+|her\s+|their\s+|our\s+)?(?:\w+\s+)?(?:boys|girls|kids|children|students|workers|maids?|us)\b"
    r"(?!\s+(?:out|off)\b)",
    r"\b(?:beats|hits|slaps|kicks|whips|canes|punches|chokes)\s+my\s+(?:little\s+|younger\s+|elder\s+|older\s+|baby\s+)?"
    r"(?:son|daughter|kids|children|child|mother|mom|mum|maa|sister|brother|wife|husband|grandmother|grandfather|nani|"
    r"dadi)\b(?!'s|\s+(?:out|off)\b)",
    # shut in by a person: "my son locks me in the storeroom", "she's locked me out on the balcony"
    rf"\b(?:{_WHO}|and)(?:'s|\s+has|\s+had)?\s+(?:always\s+|still\s+|often\s+|then\s+)?(?:lock|locks|locked|locking)\s+"
    r"(?:me|us)\s+(?:in|inside|up|outside|out(?!\s+of\s+(?:my|the|his|her|our)\s+(?:\w+\s+)?"
    r"(?:accounts?|profile|e?mail|phone|app|laptop|computer|car)\b))\b"
    r"|\block(?:s|ed)?\s+the\s+door\s+from\s+(?:the\s+)?outside\b",
    # forced labour, trafficking: a passport or ID taken, and no way out or no pay
    r"^(?=.*\b(?:kept|keeps|keep|took|takes|taken|has|have|holds?|confiscated|seized)\s+(?:away\s+)?(?:my|our)\s+"
    r"(?:\w+\s+)?(?:passports?|aadhaar(?:\s+cards?)?|id\s+cards?|ids|identity\s+cards?)\b)"
    r"(?=.*\b(?:(?:can'?t|cannot|not\s+allowed\s+to|won'?t\s+let\s+(?:me|us))\s+(?:leave|go\s+home|go\s+out|run)|"
    r"no\s+pay|without\s+pay|(?:hasn'?t|not|never)\s+(?:been\s+)?paid)\b)",
]

_MEDICAL = [
    r"\bchest\s+pain\b",
    r"\b(?:can'?t|cannot|can not|unable to|struggling to|hard to)\s+breathe\b",
    r"\bnot\s+breathing\b",
    r"\b(?:heart\s+attack|stroke)\s+(?:now|right now|i think|symptoms|happening)\b",
    r"\b(?:having|had|is having)\s+(?:a\s+)?(?:heart\s+attack|stroke|seizure|fit)\b",
    r"\b(?:took|taken|swallowed|drank|drunk|ate)\s+(?:too many|a lot of|all (?:my|the)|an? overdose of|some|"
    r"(?:a|the)\s+(?:whole\s+)?(?:bottle|packet|strip|box|pack)\s+of)?\s*"
    r"(?:pills|tablets|medicine|poison|pesticide|insecticide|herbicide|weedkiller|bleach|rat poison)\b",
    r"\b(?:overdosed|poisoned)\b",
    # a button battery or magnets swallowed burn through a child's gut within hours
    r"\bswallow(?:ed|s)?\s+(?:a\s+|an\s+|the\s+|some\s+|two\s+|\d+\s+)?(?:button|coin|lithium|watch)\s+batter(?:y|ies)\b"
    r"|\bswallow(?:ed|s)?\s+(?:a\s+|some\s+|two\s+|\d+\s+)?(?:small\s+)?magnets?\b",
    r"\b(?:unconscious|unresponsive|passed out and (?:won'?t|will not) wake)\b",
    r"\bbleeding\s+(?:heavily|a lot|badly|won'?t stop|will not stop|that won'?t stop)\b",
    r"\bsnake\s*bite|\b(?:bitten|bit|stung)\s+by\s+a\s+(?:snake|cobra|krait|viper|scorpion)\b",
    r"\b(?:snake|cobra|krait|viper|scorpion)\s+(?:bit|stung)\b",
    r"\bchest\s+(?:hurts|is tight|tightness|feels tight)\b",
    r"\b(?:face|mouth)\s+(?:is\s+)?droop|\bslurred\s+speech\b",
    r"\b(?:is|he's|she's|baby is|child is|son is|daughter is)\s+choking\b",
    r"\b(?:pesticide|insecticide|spray)\s+(?:poisoning|in my eyes)\b",
    r"\b(?:dizzy|vomiting|fainting|fainted)\b.{0,60}\b(?:after|since)\s+(?:spraying|using|mixing)\b",
    r"\bspeech\s+(?:is\s+|was\s+|got\s+|has\s+gone\s+)?slurr\w*|\b(?:can'?t|cannot|unable\s+to)\s+move\s+"
    r"(?:his|her|my|the)\s+(?:left|right)\s+side\b",
    # a diabetic's sugar far too low, with its signs: "sugar reads 38 and I'm shaking and confused"
    r"^(?=.*(?:\b(?:blood\s+)?(?:sugar|glucose|bg|bsl)(?!\s*(?:cane|mill|factory|price|rate|free|syrup))|"
    r"\bdiabet\w*\b.{0,40}\b(?:reading|meter|glucometer))\s*(?:level\s*)?(?:is|reads|says|shows|showing|at|of|was|:|=|-)?"
    r"\s*(?:only\s+|just\s+)?\b(?:[1-4]\d|50)\b(?!\s*(?:years?|yrs|kg|%|mmol|tonnes?|quintals?)))"
    r"(?=.*\b(?:shak\w*|confus\w*|sweat\w*|faint\w*|slurr\w*|can'?t\s+think|unconscious|drowsy|not\s+making\s+sense)\b)",
]

_GAME = re.compile(r"\b(?:beat|beats|beating)\s+(?:\w+\s+){1,3}(?:again\s+)?(?:at|in)\s+"
                   r"(?:a\s+|the\s+|every\s+|our\s+)?(?:\w+\s+)?(?:chess|carrom|cards|ludo|races?|match(?:es)?|games?|quiz|tennis|badminton|cricket|"
                   r"football|kabaddi|running|exams?|tests?|marks|arm\s*wrestling|wrestling|video\s*games?|fifa|pubg|"
                   r"sports?|everything|maths?)\b", re.IGNORECASE)
""""My brother beat me at chess", "she beats the boys in every race": a game won, taken out before the abuse
phrases are matched ("he slaps me whenever I beat him at cards" is still a blow)."""

_HISTORY_OR_FICTION = re.compile(
    r"\b(?:how|why|when|where)\s+(?:did|does)\s+\w+(?:\s+\w+){0,3}\s+(?:die|kill|end|hang|take)\b"
    r"|\b(?:history|historical|film|movie|novel|book|poem|song|story|character|scene|chapter|script|image|painting)\b"
    r".{0,60}\b(?:suicide|died|(?:kill|hang)(?:s|ed)?\s+(?:himself|herself)|end(?:s|ed)?\s+it\s+all|"
    r"(?:take|takes|took)\s+(?:his|her)\s+(?:own\s+)?life)\b",
    re.IGNORECASE)
"""A question about history or a story ("why did Van Gogh take his own life?", "a scene where the hero kills
himself"): a self-harm phrase in it, with no word of the writer's own (`_I`), is left to the model. Narrower than
`_NOT_NOW`, whose "helpline" or "signs of" may come with a crisis now ("Our son is suicidal, is there a helpline")."""

_WORDS_ONLY: dict[Crisis, re.Pattern[str]] = {
    "self_harm": re.compile(r"\bsuicide\b(?!\s+(?:squad|mission|doors?|run|pact\s+film))", re.IGNORECASE),
}
"""Words that speak of a crisis without saying it is the writer's, now: a pattern only when no `_NOT_NOW` cue is
in the message; with one ("my cousin died by suicide three years ago"), the model by meaning judges."""

_NOT_NOW = re.compile(
    r"\b(?:(?:years?|months?)\s+ago|last\s+(?:year|month|summer|winter)|years?\s+back|in\s+case|just\s+asking|in\s+general|"
    r"(?:is|was)\s+(?:that|it|this)\s+normal|novel|movie|film|book|story|character|history|historical|myth|"
    r"(?:died|dies)\s+by\s+suicide|committed\s+suicide|volunteer\w*|helpline|awareness|prevention|"
    r"(?:be|being|get)\s+prepared|role[-\s]?play\w*|clients?|signs\s+of|if\s+it\s+ever|training|school\s+project|"
    r"what\s+(?:to|should\s+(?:i|you|one|we))\s+do\s+if|banned)\b"
    r"|\bdid\s+(?:\w+\s+){1,3}(?:commit|die|kill|take)\b",
    re.IGNORECASE)
"""What says a message is about the past, someone else's story, fiction or a general question, not a crisis now:
it leaves a medical pattern, and a bare crisis word, to the model by meaning (which saw such look-alikes)."""

_NOT_SAID = re.compile(
    r"\b(?:not|don'?t|do not|am not|i'?m not)\s+(?:really\s+|actually\s+|feeling\s+|going\s+to\s+|planning\s+to\s+|"
    r"thinking\s+(?:of|about)\s+|trying\s+to\s+|want(?:ing)?\s+to\s+)?"
    r"(?:suicidal|(?:hurt|harm|kill)(?:ing)?\s+myself|self[-\s]?harm\w*)\b"
    r"|\b(?:hasn'?t|has\s+not|hadn'?t|didn'?t|did\s+not|isn'?t|is\s+not)\s+(?:said|talked|spoken|mentioned)?\s*"
    r"(?:anything\s+)?(?:about\s+)?(?:suicidal|(?:hurt|harm|kill|cut)(?:ing)?\s+(?:himself|herself|themselves))\b"
    r"(?!.{0,40}\b(?:until|till|but\s+now|now\s+(?:he|she|they)|tonight|today|this\s+time|like\s+this|anymore)\b)",
    re.IGNORECASE)
"""A crisis phrase the writer denies ("I'm not suicidal, just burnt out", "I don't want to hurt myself"): taken out
before the phrases are matched; the model by meaning still reads the whole message."""

_NOT_AS_SAID = re.compile(
    r"\b(?:lol|lmao|rofl|jk|haha\w*|just\s+kidding)\b|😂|🤣|😅"
    r"|\b(?:recovered|in\s+recovery|clean\s+(?:since|for)|years?\s+(?:clean|free)|(?:\d+|ten|five|two|three)\s+years?\s+ago|"
    r"(?:when\s+i\s+was|as)\s+(?:\d+|a\s+(?:kid|child|teen\w*))|(?:haven'?t|have\s+not)\s+had\s+(?:those|these|such)\s+thoughts)\b",
    re.IGNORECASE)
"""A joke, or a crisis told as past ("I used to self-harm, clean for six years"): the phrases do not decide; the
model by meaning (which saw such look-alikes, and "kms lol" meant) does."""

_NOW = re.compile(r"\b(?:right\s+now|minutes?\s+ago|hurry|please\s+help|help\s+(?:me|us)\s+(?:now|please|fast|quick)|"
                  r"is\s+having|now\s+(?:has|having|is\s+having)|just\s+(?:collapsed|swallowed|took|drank|fell|had))\b",
                  re.IGNORECASE)
"""What says a medical emergency is happening as the message is written: it keeps a medical pattern deciding."""

_PATTERNS: dict[Crisis, re.Pattern[str]] = {
    "self_harm": re.compile("|".join(_SELF_HARM), re.IGNORECASE),
    "abuse": re.compile("|".join(_ABUSE), re.IGNORECASE),
    "medical": re.compile("|".join(_MEDICAL), re.IGNORECASE),
}


def normal(message: str) -> str:
    text = message.replace("’", "'").replace("‘", "'")
    return " ".join(text.split())


NET = Path(__file__).resolve().parents[2] / "prompts" / "safety" / "crisis.json"
"""The crisis check by meaning (`core/crisis_net.Net`), fitted by `python -m krishna_ai safety fit`."""


def crisis(message: str, *, meaning: bool = True) -> Crisis | None:
    """The kind of crisis `message` speaks of, or None: by its patterns, then (with `meaning`) by the fitted model
    over its words and sentence vector. Self-harm is checked first: it is the one where a wrong "no" costs most."""
    text = normal(message or "")
    if not text:
        return None
    return by_pattern(text) or (by_meaning(text) if meaning else None)


def by_pattern(text: str) -> Crisis | None:
    """The kind whose patterns `text` matches (self-harm first), or None. A joke or a crisis told as past
    (`_NOT_AS_SAID`) is left to the model, as is a medical pattern or a bare crisis word in a message about the
    past, fiction or a general question (`_NOT_NOW`); a phrase the writer denies (`_NOT_SAID`) is not matched."""
    if _NOT_AS_SAID.search(text):
        return None
    text = _NOT_SAID.sub(" ", text)
    not_now = _NOT_NOW.search(text) is not None
    for kind, pattern in _PATTERNS.items():
        words_only = kind in _WORDS_ONLY and _WORDS_ONLY[kind].search(text) is not None
        if not ((pattern.search(_GAME.sub(" ", text) if kind == "abuse" else text)) or (words_only and not not_now)):
            continue
        if kind == "medical" and not_now and not _NOW.search(text):
            continue  # "my uncle had a heart attack last year"
        if kind == "self_harm" and _HISTORY_OR_FICTION.search(text) and not re.search(rf"\b{_I}\b", text, re.I):
            continue  # "why did Van Gogh take his own life?" is a question about history
        return kind
    return None


def by_meaning(text: str) -> Crisis | None:
    """The crisis kind the fitted model gives `text` when its P(crisis) reaches the model's threshold, or one of its
    sentences' reaches the sentence threshold; None otherwise, and when no model is fitted or the sentence vectors'
    model is missing (then a warning, once)."""
    net = load_net(NET, MEANING_MODEL)
    if net is None:
        _warn_once(f"{NET} is missing: crisis messages are judged by their patterns only "
                   "(`python -m krishna_ai safety fit` writes it)")
        return None
    try:
        from krishna_ai.core.vectors import sentence_vector, sentence_vectors

        vector = sentence_vector(text)
    except ModelUnavailable as exc:
        _warn_once(f"crisis messages are judged by their patterns only: {exc}")
        return None
    if len(vector) != net.dimensions:
        raise PersonaError(f"{NET}: fitted on vectors of {net.dimensions} numbers, but "
                           f"{MEANING_MODEL} gives {len(vector)}: refit with `python -m krishna_ai safety fit`")
    kind = net.kind(text, vector)
    if kind is None and net.sentence_threshold is not None and (pieces := sentences(text)):
        kind = net.sentence_kind(pieces, sentence_vectors(pieces))
    return cast("Crisis | None", kind)  # one of CRISES: checked at load


@lru_cache(maxsize=8)
def _warn_once(message: str) -> None:
    log.warning(message)


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
