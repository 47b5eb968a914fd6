"""Evaluation: style compliance (and accuracy for labelled sets) over held-out questions.

    python -m krishna_ai eval --persona krishna --model light --model light@adapters/krishna-light \\
        --questions data/krishna/heldout.jsonl --json runs/eval-krishna.json

Each model is given as SPEC or SPEC@ADAPTER; several are compared side by side in one table.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from krishna_ai.data import read_jsonl
from krishna_ai.errors import DataError, problems
from krishna_ai.generation import ChatEngine, SamplingParams
from krishna_ai.personas import Persona
from krishna_ai.prompting import build_messages
from krishna_ai.style import check_reply


def load_questions(path: str | Path) -> list[dict[str, Any]]:
    """One question per line (.txt), or JSONL with `question` and optional `label`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: questions file not found")
    if path.suffix != ".jsonl":
        rows = [{"question": line.strip()} for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not rows:
            raise DataError(f"{path}: no questions")
        return rows
    errors, rows = [], []
    for n, obj in read_jsonl(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) or not obj["question"].strip():
            errors.append(f"{path.name}:{n}: needs a non-empty \"question\" string")
            continue
        if "label" in obj and not isinstance(obj["label"], str):
            errors.append(f"{path.name}:{n}: \"label\" must be a string")
            continue
        rows.append({"question": obj["question"], "label": obj.get("label")})
    if errors:
        raise DataError(problems(f"{path}: {len(errors)} bad line(s)", errors))
    return rows


def rules_for(persona: Persona) -> list[str]:
    """The rule names a persona's style can report (the columns of the per-rule table)."""
    s = persona.style
    rules = ["empty_reply"]
    rules += ["missing_address"] if s.address else []
    rules += ["forbidden_word"] if s.forbidden_words else []
    rules += ["sentence_count"] if s.sentences else []
    rules += ["missing_story"] if s.story else []
    rules += ["verse_quote"] if s.no_verse_quotes else []
    rules += ["too_long"] if s.max_words else []
    rules += [f"missing_{r.name}" for r in s.require]
    return rules


def parse_label(reply: str, labels: list[str]) -> str | None:
    """The label a reply states: on a `Diagnosis:`/`Answer:`/`Label:` line if there is one, else the first named."""
    line = re.search(r"(?im)^\W*(?:diagnosis|answer|label|condition)\W*:\s*(.+)$", reply)
    for text in ([line.group(1)] if line else []) + [reply]:
        found = [(m.start(), -len(lab), lab) for lab in labels
                 for m in [re.search(rf"(?i)(?<!\w){re.escape(lab)}(?!\w)", text)] if m]
        if found:
            return min(found)[2]
    return None


def evaluate(engine: ChatEngine, persona: Persona, questions: list[dict[str, Any]], params: SamplingParams,
             *, batch_size: int = 8, name: str = "", progress: bool = True) -> dict[str, Any]:
    """Generate a reply per question and score it; returns the per-model result dict."""
    rules = rules_for(persona)
    replies: list[dict[str, Any]] = []
    bar = tqdm(total=len(questions), desc=f"eval {name or engine.name}", disable=not progress)
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        convs = [build_messages(persona, [], q["question"], personality=persona.pick_personality(
            q["question"], None, random.Random(start + i))) for i, q in enumerate(chunk)]
        texts = engine.generate_batch(convs, params)
        for q, text in zip(chunk, texts, strict=True):
            violations = check_reply(text, persona)
            row: dict[str, Any] = {"question": q["question"], "reply": text,
                                   "violations": [v.rule for v in violations], "ok": not violations}
            if q.get("label") is not None:
                row["label"] = q["label"]
                row["predicted"] = parse_label(text, persona.labels or [q["label"]])
                row["correct"] = (row["predicted"] or "").lower() == q["label"].lower()
            replies.append(row)
        bar.update(len(chunk))
    bar.close()
    n = len(replies)
    per_rule = {r: sum(r not in row["violations"] for row in replies) / n for r in rules}
    labelled = [row for row in replies if "label" in row]
    return {
        "name": name or engine.name,
        "n": n,
        "compliance": sum(row["ok"] for row in replies) / n,
        "rules": per_rule,
        "accuracy": (sum(row["correct"] for row in labelled) / len(labelled)) if labelled else None,
        "sampling": {k: v for k, v in vars(params).items()},
        "replies": replies,
    }


def format_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per model, compliance, accuracy and every rule's pass rate."""
    rules = list(dict.fromkeys(r for res in results for r in res["rules"]))
    head = ["model", "n", "compliance", "accuracy", *rules]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        acc = "–" if res["accuracy"] is None else f"{res['accuracy']:.0%}"
        cells = [res["name"], str(res["n"]), f"{res['compliance']:.0%}", acc,
                 *(f"{res['rules'][r]:.0%}" if r in res["rules"] else "–" for r in rules)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(results: list[dict[str, Any]], persona: Persona, questions_path: str, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    payload = {"persona": persona.id, "questions": str(questions_path), "models": results}
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    tmp.replace(out)
    return out


def split_spec(spec: str) -> tuple[str, str | None]:
    """"light@adapters/x" -> ("light", "adapters/x")."""
    model, sep, adapter = spec.partition("@")
    return model, (adapter if sep else None)
