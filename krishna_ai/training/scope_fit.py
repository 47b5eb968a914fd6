"""Fitting and measuring the personas' scope gates (krishna_ai/core/scope.py).

    python -m krishna_ai scope fit                       # every persona with a [scope] gate: writes its file
    python -m krishna_ai scope eval                      # caught / refused on data/scope/heldout.jsonl

`fit` reports what cross-validation saw on the fitting questions; `eval` is the number to quote: questions
none of the gates was fitted on, labelled by hand per persona, judged exactly as the app judges them
(gate, outside words, no card).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from krishna_ai.core.cache import write_text
from krishna_ai.core.errors import PersonaError
from krishna_ai.core.gate import Gate, fit
from krishna_ai.core.personas import Persona, load_persona
from krishna_ai.core.scope import Embed, examples, judge, labelled_for

HELDOUT = Path(__file__).resolve().parents[2] / "data" / "scope" / "heldout.jsonl"


def fit_persona(path: str | Path, embed: Embed, embedding: str, *, progress: bool = True) -> tuple[Persona, Gate]:
    """Fit the gate of the persona file at `path` on its [scope] files and write it where `scope.gate` says."""
    persona = load_persona(path, check_gate=False)
    scope = persona.scope
    if scope is None or not scope.gate:
        raise PersonaError(f"{Path(path).name}: no [scope] gate to fit (scope.gate is not set)")
    labelled = examples(persona)
    vectors = [embed(q) for q, _ in tqdm(labelled, desc=f"{persona.id}: embedding", disable=not progress)]
    gate = fit(labelled, vectors, embedding, max_refused=scope.max_refused)
    write_text(scope.gate, gate.to_json() + "\n")
    return persona, gate


@dataclass
class Measured:
    """One persona's gate on a labelled file: outside questions caught, inside questions refused."""

    persona: str
    inside: int = 0
    outside: int = 0
    caught: int = 0
    refused: int = 0
    missed: list[str] = field(default_factory=list)
    wrongly_refused: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def caught_share(self) -> float:
        return self.caught / self.outside if self.outside else 1.0

    @property
    def refused_share(self) -> float:
        return self.refused / self.inside if self.inside else 0.0


def measure(personas: Sequence[Persona], labelled: str | Path, embed: Embed) -> list[Measured]:
    """Judge every labelled question for every persona it is labelled for, as the app would (no history)."""
    results = []
    for persona in personas:
        if persona.scope is None:
            continue
        m = Measured(persona.id)
        for question, outside in labelled_for(persona.id, str(labelled)):
            verdict = judge(persona, question, embed)
            if verdict is not None:
                m.reasons[verdict.reason] = m.reasons.get(verdict.reason, 0) + 1
            if outside:
                m.outside += 1
                if verdict is not None:
                    m.caught += 1
                else:
                    m.missed.append(question)
            else:
                m.inside += 1
                if verdict is not None:
                    m.refused += 1
                    m.wrongly_refused.append(f"{question}  [{verdict.reason}]")
        results.append(m)
    return results


def format_measured(results: Sequence[Measured]) -> str:
    lines = ["| persona | outside questions | caught | inside questions | wrongly refused | by |",
             "|---|---|---|---|---|---|"]
    for m in results:
        by = ", ".join(f"{k} {v}" for k, v in sorted(m.reasons.items())) or "-"
        lines.append(f"| {m.persona} | {m.outside} | {m.caught} ({m.caught_share:.1%}) | {m.inside} | "
                     f"{m.refused} ({m.refused_share:.1%}) | {by} |")
    for m in results:
        for q in m.missed:
            lines.append(f"{m.persona}: missed (answered though outside): {q}")
        for q in m.wrongly_refused:
            lines.append(f"{m.persona}: wrongly refused: {q}")
    return "\n".join(lines)
