"""The bank tables of a persona file: `[knowledge]` (cards of facts put in the prompt and retold),
`[counsel]` (teachings the model applies, or counsel written on cards: Krishna's) and `[coach]` (checklists for
kinds of prompt that write a rewrite: PET's). What the cards are and how
they are found is krishna_ai/core/knowledge.py; when, per question, is krishna_ai/core/grounding.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from krishna_ai.core.errors import PersonaError, problems
from krishna_ai.core.knowledge import load_bank
from krishna_ai.core.schema import Strict


class _Strict(Strict):
    model_config = ConfigDict(frozen=True)  # part of a loaded persona, shared by every session: never changed


def _has_cards(value: str | None) -> str | None:
    if value is not None and "$cards" not in value:
        raise ValueError("must contain $cards (where the retrieved facts go)")
    return value


class _Bank(_Strict):
    """A folder of cards retrieved per question."""

    bank: str
    """Folder of card files, relative to the persona file (e.g. "knowledge/krishna")."""
    min_score: Annotated[float, Field(ge=0.0)] = 0.0
    """A card must score above this (BM25) to count as fitting the question."""


class Knowledge(_Bank):
    """A knowledge bank the persona's replies are grounded in (see krishna_ai/core/knowledge.py), put in the
    prompt through `instruction`."""

    instruction: Annotated[str, AfterValidator(_has_cards)]
    """How to use the cards; `$cards` is replaced by their text, `$person` by the first card's person."""
    top_k: Annotated[int, Field(ge=1, le=5)] = 1
    """Cards put in the prompt."""
    min_coverage: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """...and share at least this share of the question's content words (0.25: one word in four)."""
    no_match: str | None = None
    """Instruction when no card fits (None: the persona's plain prompt)."""
    unknown_person: str | None = None
    """A sentence the app adds after the reply when the user asked about a person the bank has no card of
    (`$person` is the name asked). The model is never asked to write it: it tells no story (`no_match`)."""
    vectors: bool = False
    """Rank cards by meaning too: BM25 and sentence vectors fused (core/vectors.py). For questions that rarely
    share words with the card that fits (a trouble and a story); a bank of facts asked about by name keeps
    BM25 alone."""
    checked: Literal["story", "reply"] = "reply"
    """The factual part `eval` checks against the cards: the story paragraphs, or the whole reply."""
    one_label: bool = False
    """For a persona with `labels` whose cards each carry one as a theme (Maize: a condition per card): only
    cards of the best card's label go into the prompt, so the advice a reply retells is that condition's."""
    confidence: dict[Literal["high", "medium"], Annotated[float, Field(ge=0.0, le=1.0)]] | None = None
    """With `one_label`: the highest confidence a reply may state, from how close the runner-up label's best
    card came to the best one's (core/evidence.py): that ratio at most `high` allows "high", at most `medium`
    allows "medium", else "low"."""

    @model_validator(mode="after")
    def _confidence_bounds(self) -> Knowledge:
        if self.confidence is not None:
            if set(self.confidence) != {"high", "medium"} or self.confidence["high"] > self.confidence["medium"]:
                raise ValueError("confidence needs both bounds, high <= medium: { high = 0.75, medium = 0.9 }")
            if not self.one_label:
                raise ValueError("confidence follows one label's evidence, so it needs one_label = true")
        return self


class Counsel(_Bank):
    """A bank the persona's advice comes from, retrieved per question and shown as a source: teachings put in the
    prompt for the model to apply (Krishna's Gita: it paraphrases a teaching that fits instead of inventing one),
    or, with `written`, counsel cards whose text is the advice itself."""

    top_k: Annotated[int, Field(ge=1, le=3)] = 1
    instruction: Annotated[str | None, AfterValidator(_has_cards)] = None
    """How to use the teachings (`$cards` is replaced by their text); not used with `written`."""
    written: bool = False
    """The best card's text opens the reply as its counsel, and the model writes only what follows (the story):
    a 270M model retells well what it is given and advises badly on its own (README "Written counsel")."""
    vectors: bool = False
    """Rank the cards by meaning too: BM25 and sentence vectors fused, a card's vector score being its own cosine
    plus its nearest `examples`' (the troubles it was written for)."""
    teachings: str | None = None
    """The bank of teachings the counsel cards apply (their `teaching` ids are checked against it at load)."""
    matcher: str | None = None
    """With `vectors`: a folder (relative to the persona file) holding a LoRA of the sentence model tuned so that a
    trouble's vector lands near its card's and examples' (`python -m krishna_ai matcher fit` writes it)."""

    @model_validator(mode="after")
    def _how_used(self) -> Counsel:
        if not self.written and self.instruction is None:
            raise ValueError("needs an instruction with $cards (teachings the model applies), or written = true "
                             "(the card's text is the counsel)")
        if self.matcher is not None and not self.vectors:
            raise ValueError("matcher tunes the ranking by meaning, so it needs vectors = true")
        return self


class Coach(_Bank):
    """Prompt-kind cards whose `needs` write a rewriting persona's whole reply (PET: the critique and the improved
    prompt, core/coaching.py); no model runs. Needs `[style] rewrite`, the label the improved prompt follows."""

    general: str
    """The card used when no kind fits the task (a checklist for any prompt)."""
    vectors: bool = True
    """Rank the kinds by meaning too (BM25 and sentence vectors fused, each kind scored by its nearest example)."""
    min_meaning: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    """A kind whose meaning score (its own cosine to the task plus its nearest example's) is below this does not
    fit: a task no kind is close to gets the general card (chosen with `python bench/kind_fit.py`)."""


def checked_teachings(path: Path, counsel: Counsel) -> Counsel:
    """`counsel` with its teachings bank resolved, once every counsel card's `teaching` is found in it."""
    folder = (path.parent / str(counsel.teachings)).resolve()
    try:
        teachings = {c.id for c in load_bank(folder).cards}
    except PersonaError as exc:
        raise PersonaError(f"{path.name}: counsel.teachings: {exc}") from None
    wrong = [f"{path.name}: counsel: card {c.id}: teaching: {c.teaching!r} is not a card of {counsel.teachings}"
             for c in load_bank(counsel.bank).cards if c.teaching is not None and c.teaching not in teachings]
    if wrong:
        raise PersonaError(problems(f"{path}: invalid persona", wrong))
    return counsel.model_copy(update={"teachings": str(folder)})
