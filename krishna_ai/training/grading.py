"""Blind grading of held-out replies: what no rule can check (is the counsel coherent, on the person's
question, useful?) graded by a person who does not know which model wrote which reply.

    python -m krishna_ai grade prepare --eval runs/a.json --eval runs/b.json --rubric data/grading/krishna.md \\
        --out grades/krishna.json            # the replies of both, shuffled, without model names
    (edit grades/krishna.json: each reply's "grade" becomes good, weak or bad, "note" says why)
    python -m krishna_ai grade summary grades/krishna.json   # the share graded good, per model

`prepare` writes the sheet (the rubric, then the replies in a seeded random order, each under an opaque id)
and, beside it, `<sheet>.key.json` (which model wrote each id): open the key only after grading. `summary`
refuses a sheet with replies still ungraded, unless asked for a partial count.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from krishna_ai.core.cache import write_text
from krishna_ai.core.errors import DataError
from krishna_ai.core.personas import Persona

GRADES = ("good", "weak", "bad")
RUBRICS = Path(__file__).resolve().parents[2] / "data" / "grades"
"""The written rubrics, one per persona: <persona>-rubric.md."""


def rubric_for(persona_id: str) -> Path | None:
    path = RUBRICS / f"{persona_id}-rubric.md"
    return path if path.is_file() else None


def key_path(sheet: str | Path) -> Path:
    sheet = Path(sheet)
    return sheet.with_name(sheet.stem + ".key.json")


def prepare(evals: list[str | Path], rubric: str | Path, out: str | Path, *, seed: int = 0,
            limit: int | None = None) -> tuple[Path, Path]:
    """The blind sheet and its key for the replies in `evals` (eval JSON files), the same questions from each:
    the first `limit` questions that every model answered."""
    models: list[tuple[str, dict[str, str]]] = []
    for path in evals:
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            results = [(r["name"], {x["question"]: x["reply"] for x in r.get("replies", [])})
                       for r in payload.get("models", [])]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{path.name} is not an eval result (python -m krishna_ai eval --out …): {exc}") from None
        # "eval-heldout.json:light-gguf"; with the folder when two files share a name (two adapters' evals)
        short = sum(Path(p).name == path.name for p in evals) == 1
        models += [(f"{path.name if short else path.parent.name + '/' + path.name}:{name}", replies)
                   for name, replies in results]
    if len(models) < 1:
        raise DataError(f"no model results in {', '.join(map(str, evals))}")
    names = [m for m, _ in models]
    if len(set(names)) != len(names):
        raise DataError(f"two results carry the same name: {names}")
    common = [q for q in models[0][1] if all(q in replies for _, replies in models[1:])]
    common = common[:limit] if limit else common
    if not common:
        raise DataError("the evaluations share no question")
    rows = [(name, q, replies[q]) for name, replies in models for q in common]
    random.Random(seed).shuffle(rows)
    sheet = {"rubric": Path(rubric).read_text(encoding="utf-8"), "grades": list(GRADES),
             "replies": [{"id": f"r{i:03d}", "question": q, "reply": reply, "grade": None, "note": ""}
                         for i, (_, q, reply) in enumerate(rows, 1)]}
    key = {f"r{i:03d}": name for i, (name, _, _) in enumerate(rows, 1)}
    out = Path(out)
    write_text(out, json.dumps(sheet, indent=1, ensure_ascii=False) + "\n")
    write_text(key_path(out), json.dumps(key, indent=1) + "\n")
    return out, key_path(out)


def grade(sheet_path: str | Path, reply_id: str, value: str, note: str = "") -> dict[str, Any]:
    """Grade one reply of a sheet (good, weak or bad, and why), written at once: a grading left half-way is
    resumed where it stopped. Returns the sheet."""
    if value not in GRADES:
        raise DataError(f"a grade is one of {', '.join(GRADES)}, not {value!r:.40}")
    sheet = json.loads(Path(sheet_path).read_text(encoding="utf-8"))
    row = next((r for r in sheet["replies"] if r["id"] == reply_id), None)
    if row is None:
        raise DataError(f"{Path(sheet_path).name} has no reply {reply_id!r:.40}")
    row["grade"], row["note"] = value, (note or "").strip()[:2000]
    write_text(sheet_path, json.dumps(sheet, indent=1, ensure_ascii=False) + "\n")
    return sheet


def eval_files(persona: Persona) -> list[Path]:
    """The eval results that sit beside the persona's adapters (eval-*.json): what the Grade tab offers."""
    found = {f for adapter in persona.adapters.values() for f in Path(adapter).glob("eval-*.json")}
    return sorted(found)


def summary(sheet_path: str | Path, *, partial: bool = False) -> dict[str, dict[str, Any]]:
    """Per model: how many replies were graded and the share of each grade."""
    sheet = json.loads(Path(sheet_path).read_text(encoding="utf-8"))
    key = json.loads(key_path(sheet_path).read_text(encoding="utf-8"))
    bad = [r["id"] for r in sheet["replies"] if r["grade"] is not None and r["grade"] not in GRADES]
    if bad:
        raise DataError(f"{sheet_path}: grades must be one of {', '.join(GRADES)}; not so for {', '.join(bad)}")
    todo = [r["id"] for r in sheet["replies"] if r["grade"] is None]
    if todo and not partial:
        raise DataError(f"{sheet_path}: {len(todo)} of {len(sheet['replies'])} replies are not graded yet "
                        f"(first: {todo[0]}); grade them, or ask for a partial summary")
    out: dict[str, dict[str, Any]] = {}
    for row in sheet["replies"]:
        model = out.setdefault(key[row["id"]], {"graded": 0, **{g: 0 for g in GRADES}})
        if row["grade"] is not None:
            model["graded"] += 1
            model[row["grade"]] += 1
    for model in out.values():
        n = model["graded"]
        model.update({f"{g}_share": (model[g] / n if n else None) for g in GRADES})
    return out


def format_summary(result: dict[str, dict[str, Any]]) -> str:
    lines = ["| model | graded | good | weak | bad |", "|---|---|---|---|---|"]
    for name, m in result.items():
        cells = [f"{m[g]} ({m[g + '_share']:.0%})" if m["graded"] else "–" for g in GRADES]
        lines.append(f"| {name} | {m['graded']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
