"""Personas: data files in `prompts/`, validated on load.

A persona is a TOML file. Unknown keys are rejected and every problem is reported at once, each
naming the file and the field (``krishna.toml: sampling.temperature: ...``). See
`prompts/krishna.toml` for a complete, commented example.
"""

from __future__ import annotations

import os
import random
import string
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from krishna_ai.core.banks import Coach, Counsel, Knowledge, checked_teachings
from krishna_ai.core.coaching import check_kinds
from krishna_ai.core.errors import PersonaError, problems
from krishna_ai.core.gate import MAX_REFUSED
from krishna_ai.core.sampling import SamplingParams
from krishna_ai.core.schema import Regex, Strict

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"
"""The personas shipped with the project."""

PROMPTS_ENV = "KRISHNA_AI_PROMPTS"
"""Environment variable: extra persona folders (os.pathsep-separated), searched after the shipped one."""

STORY_VARIABLES = {"personality"}


class _Strict(Strict):
    model_config = ConfigDict(frozen=True)  # a loaded persona is shared by every session: never changed


class RequiredPattern(_Strict):
    """A named regular expression the reply must match (e.g. a `Diagnosis:` line)."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    pattern: Regex
    hint: str = ""
    """What the reply should contain, shown in the violation message."""


class Style(_Strict):
    """Constraints a reply must meet; checked by `krishna_ai.core.style.check_reply`."""

    address: str | None = None
    """A word the reply must use to address the user (e.g. "Partha")."""
    forbidden_words: list[str] = []
    """Whole words that must never appear (case-insensitive)."""
    sentences: tuple[int, int] | None = None
    """(min, max) sentences in the answer part (the first paragraph when a story is required)."""
    story: bool = False
    """The reply must end with a story paragraph after the answer."""
    story_min_words: Annotated[int, Field(ge=1)] = 20
    no_verse_quotes: bool = False
    """Flag verbatim quoting: chapter/verse references and long passages in quotation marks."""
    verses: str | None = None
    """With `no_verse_quotes`: a text file of well-known renderings of the scripture (one passage per paragraph,
    # comments), relative to the persona file. A reply that repeats `verse_run` words in a row of one of them
    is a verse quote even without quotation marks."""
    verse_run: Annotated[int, Field(ge=4)] = 8
    max_words: Annotated[int, Field(ge=1)] | None = None
    require: list[RequiredPattern] = []
    rewrite: str | None = None
    """The label of the line where the reply rewrites the user's own text (PET: "Improved prompt"): `eval`
    checks that the rewrite keeps the user's task and states no two values for one thing."""

    @field_validator("sentences")
    @classmethod
    def _range(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not (1 <= value[0] <= value[1]):
            raise ValueError(f"must be [min, max] with 1 <= min <= max, got {list(value)}")
        return value


class Scope(_Strict):
    """What the persona is for, and the reply it gives to anything else (see krishna_ai/core/scope.py).

    A message outside it is answered with `decline`, written once in the persona's voice and stating no facts,
    and no model writes anything: a 270M model asked about what it does not know invents it."""

    decline: str
    """The whole reply to a message outside the persona's scope."""
    gate: str | None = None
    """The fitted gate file (relative to the persona file), written by `python -m krishna_ai scope fit`."""
    outside_words: list[str] = []
    """Words that name what is outside (another crop, for Maize): a message with one of them, and none of
    `inside_words`, is outside whatever the gate says."""
    inside_words: list[str] = []
    without_cards: bool = False
    """A question no knowledge card fits is outside (Aurora: what its notes do not cover)."""
    inside: list[str] = []
    """Training files (JSONL with "question") whose questions are inside: what `scope fit` learns from. A folder
    of knowledge cards stands for its cards' `examples` (PET: the tasks of every prompt kind)."""
    outside: list[str] = []
    """Training files (or card folders) whose questions are outside (other personas' questions)."""
    labelled: str | None = None
    """A JSONL of hand-labelled questions: {"question", "in": [persona ids], "out": [persona ids]}."""
    max_refused: Annotated[float, Field(gt=0.0, le=0.2)] = MAX_REFUSED
    """`scope fit` sets the gate's threshold to refuse at most this share of the inside questions it learns from
    (cross-validated): a persona with many easy inside examples needs less, or its plain questions pay for them
    (PET, `python bench/scope_share.py`)."""


class Persona(_Strict):
    """One assistant persona: who it is, how it must answer, and how to sample it."""

    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$")]
    name: str
    """Display name in the UI."""
    description: str
    greeting: str
    """First assistant message of a new chat."""
    system_prompt: str
    constraints: list[str] = []
    """Style rules stated to the model, appended to the system prompt as a list."""
    story_template: str | None = None
    """Instruction for the closing story; `$personality` is replaced by the chosen person. A persona with a
    knowledge bank tells the story of its card instead: there this is asked only without the bank."""
    personalities: list[str] = []
    """Famous people the story may be about when the user names none."""
    examples: list[str] = []
    """Example questions shown in the UI."""
    accepts_images: bool = False
    labels: list[str] = []
    """For classification personas: the answers `eval` parses from replies to score accuracy."""
    label_terms: dict[str, list[str]] = {}
    """The words that mean each label in a reply (default: its name; a disease's pathogen too): `eval`'s
    `consistent` reads a reply that states one label and names another's as disagreeing with itself."""
    sampling: SamplingParams = SamplingParams()
    style: Style = Style()
    knowledge: Knowledge | None = None
    """Ground replies in a bank of sourced cards retrieved per question."""
    counsel: Counsel | None = None
    """Ground the persona's advice in a bank of teachings retrieved per question (shown as sources)."""
    coach: Coach | None = None
    """Write the whole reply from a checklist for the kind of prompt asked (PET: core/coaching.py); no model runs."""
    scope: Scope | None = None
    """What the persona answers; anything else gets its fixed decline (None: it answers everything)."""
    adapters: dict[str, str] = {}
    """LoRA adapter merged at load when this persona runs on a tier, e.g. {light = "../adapters/x"}
    (paths relative to the persona file). An adapter given with --adapter takes precedence."""

    @field_validator("story_template")
    @classmethod
    def _template_variables(cls, value: str | None) -> str | None:
        if value is None:
            return value
        matches = list(string.Template.pattern.finditer(value))
        names = {m.group("named") or m.group("braced") for m in matches if m.group("named") or m.group("braced")}
        bad = [m.group(0) for m in matches if m.group("invalid") is not None]
        unknown = names - STORY_VARIABLES
        if bad or unknown:
            raise ValueError(
                f"unknown template variable(s) {sorted(unknown) or bad}; allowed: "
                + ", ".join(f"${v}" for v in sorted(STORY_VARIABLES))
            )
        return value

    @model_validator(mode="after")
    def _story_needs_people(self) -> Persona:
        if self.story_template and "$personality" in self.story_template and not self.personalities:
            raise ValueError("story_template uses $personality, so personalities must list at least one name")
        unknown = sorted(set(self.label_terms) - set(self.labels))
        if unknown:
            raise ValueError(f"label_terms names {unknown}, which are not among labels {self.labels}")
        if self.knowledge is not None and self.knowledge.one_label and not self.labels:
            raise ValueError("knowledge.one_label keeps one label's cards, so labels must list the persona's labels")
        if self.coach is not None and not self.style.rewrite:
            raise ValueError("coach: needs [style] rewrite, the label the improved prompt follows")
        return self

    def adapter_for(self, spec: str) -> str | None:
        """The persona's adapter for a model spec; `light-gguf` (the same weights on llama.cpp) uses `light`'s."""
        if spec in self.adapters:
            return self.adapters[spec]
        return self.adapters.get("light") if spec == "light-gguf" else None

    def story_instruction(self, personality: str | None) -> str | None:
        """The story instruction with `personality` filled in, or None when the persona tells no story."""
        if not self.story_template:
            return None
        return string.Template(self.story_template).substitute(personality=personality or "a famous person")

    def pick_personality(self, message: str, requested: str | None = None,
                         rng: random.Random | None = None) -> str | None:
        """Who the story is about: the one requested, else one the message names, else a random one."""
        if requested and requested.strip():
            return requested.strip()
        lowered = message.lower()
        for person in self.personalities:
            if person.lower() in lowered:
                return person
        return (rng or random).choice(self.personalities) if self.personalities else None


def _format_validation_error(path: Path, exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see prompts/krishna.toml for the allowed keys)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        out.append(f"{path.name}: {field}: {msg}")
    return out


def load_persona(path: str | Path, *, check_gate: bool = True) -> Persona:
    """Load and validate one persona file; raise PersonaError naming the file and every bad field.
    (`check_gate=False` lets `scope fit` and `matcher fit` load a persona whose gate or matcher they are about to
    write.)"""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PersonaError(f"{path}: persona file not found") from None
    except UnicodeDecodeError as exc:
        raise PersonaError(f"{path.name}: not UTF-8 text ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PersonaError(f"{path.name}: not valid TOML: {exc}") from None
    try:
        persona = Persona.model_validate(raw)
    except ValidationError as exc:
        items = _format_validation_error(path, exc)
        raise PersonaError(problems(f"{path}: invalid persona ({len(items)} problem(s))", items)) from None
    if persona.id != path.stem:
        raise PersonaError(f"{path.name}: id: is {persona.id!r} but must match the file name {path.stem!r}")
    if persona.adapters:
        resolved = {tier: str((path.parent / p).resolve()) for tier, p in persona.adapters.items()}
        missing = [f"{path.name}: adapters.{t}: {p} does not exist" for t, p in resolved.items()
                   if not Path(p).is_dir()]
        if missing:
            raise PersonaError(problems(f"{path}: invalid persona", missing))
        persona = persona.model_copy(update={"adapters": resolved})
    from krishna_ai.core.knowledge import load_bank

    if persona.style.verses:
        verses = (path.parent / persona.style.verses).resolve()
        if not verses.is_file():
            raise PersonaError(f"{path.name}: style.verses: {persona.style.verses} does not exist")
        style = persona.style.model_copy(update={"verses": str(verses)})
        persona = persona.model_copy(update={"style": style})
    if persona.scope is not None:
        persona = persona.model_copy(update={"scope": _resolve_scope(path, persona.scope, check_gate)})
    for field in ("knowledge", "counsel", "coach"):  # each bank checked now: a bad card fails the persona at load
        table = getattr(persona, field)
        if table is None:
            continue
        folder = (path.parent / table.bank).resolve()
        try:
            load_bank(folder)
        except PersonaError as exc:
            raise PersonaError(f"{path.name}: {field}.bank: {exc}") from None
        persona = persona.model_copy(update={field: table.model_copy(update={"bank": str(folder)})})
    if persona.counsel is not None and persona.counsel.teachings is not None:
        persona = persona.model_copy(update={"counsel": checked_teachings(path, persona.counsel)})
    if persona.counsel is not None and persona.counsel.matcher is not None:
        matcher = (path.parent / persona.counsel.matcher).resolve()
        if check_gate and not (matcher / "adapter_config.json").is_file():
            raise PersonaError(f"{path.name}: counsel.matcher: {persona.counsel.matcher} is not a matcher (no "
                               f"adapter_config.json in {matcher}); write it with python -m krishna_ai matcher fit")
        persona = persona.model_copy(update={"counsel": persona.counsel.model_copy(update={"matcher": str(matcher)})})
    if persona.coach is not None:
        check_kinds(path, persona.coach.bank, persona.coach.general)
    return persona


def _resolve_scope(path: Path, scope: Scope, check_gate: bool = True) -> Scope:
    """The scope's files as absolute paths; a gate file named but missing or unreadable fails the persona now
    (`check_gate=False`: for `scope fit`, which writes it)."""
    def resolve(p: str) -> str:
        return str((path.parent / p).resolve())

    update: dict[str, object] = {"inside": [resolve(p) for p in scope.inside],
                                 "outside": [resolve(p) for p in scope.outside]}
    if scope.labelled:
        update["labelled"] = resolve(scope.labelled)
    if scope.gate:
        gate = resolve(scope.gate)
        if check_gate:
            from krishna_ai.core.gate import load_gate

            if not Path(gate).is_file():
                raise PersonaError(f"{path.name}: scope.gate: {scope.gate} does not exist "
                                   f"(python -m krishna_ai scope fit --persona {path.stem} writes it)")
            try:
                load_gate(gate)
            except PersonaError as exc:
                raise PersonaError(f"{path.name}: scope.gate: {exc}") from None
        update["gate"] = gate
    return scope.model_copy(update=update)


def persona_dirs(extra: Sequence[str | Path] | None = None) -> list[Path]:
    """Folders searched for personas: the shipped one, then $KRISHNA_AI_PROMPTS, then `extra`."""
    dirs = [PROMPTS_DIR]
    env = os.environ.get(PROMPTS_ENV, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in (extra or [])]
    return dirs


def load_personas(dirs: Sequence[str | Path] | None = None) -> dict[str, Persona]:
    """Load every `*.toml` persona in the folders; a later folder overrides an earlier id.

    All files are validated before anything is returned, and all problems are reported together.
    """
    folders = [Path(d) for d in dirs] if dirs is not None else persona_dirs()
    found: dict[str, Persona] = {}
    errors: list[str] = []
    for folder in folders:
        if not folder.is_dir():
            errors.append(f"{folder}: persona folder does not exist")
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                persona = load_persona(path)
            except PersonaError as exc:
                errors.append(str(exc))
                continue
            found[persona.id] = persona
    if errors:
        raise PersonaError(problems("Some persona files could not be loaded:", errors))
    if not found:
        raise PersonaError(f"no persona files (*.toml) found in {', '.join(map(str, folders))}")
    return found


def get_persona(personas: dict[str, Persona], persona_id: str) -> Persona:
    """Look up a persona by id with an error that lists the known ones."""
    try:
        return personas[persona_id]
    except KeyError:
        raise PersonaError(
            f"unknown persona {persona_id!r}; available: {', '.join(sorted(personas))}"
        ) from None

