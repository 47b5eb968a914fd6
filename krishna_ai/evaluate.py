"""Evaluation over held-out questions: does each reply end, stay clean, meet the persona's rules?

    python -m krishna_ai eval --persona krishna --model light@none --model light \\
        --questions data/krishna/heldout.jsonl --json runs/eval-krishna.json

A model is SPEC (with the persona's own adapter for that tier applied, as the app serves it),
SPEC@none (the bare model: the prompt-only baseline) or SPEC@ADAPTER. Several are compared side by
side in one table, whose columns are pass rates named for what passes ("ended", "no leak").
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from krishna_ai.cache import write_text
from krishna_ai.data import read_jsonl
from krishna_ai.errors import DataError, problems
from krishna_ai.knowledge import Card, ground, load_bank, named_person, unsupported
from krishna_ai.personas import Persona
from krishna_ai.prompting import build_messages
from krishna_ai.runtime.engine import Engine
from krishna_ai.sampling import SamplingParams
from krishna_ai.style import check_reply, paragraphs, pass_label


def load_questions(path: str | Path) -> list[dict[str, Any]]:
    """One question per line (.txt), or JSONL with `question` and optional `label` (the class a reply must
    state), `answer` (a reference answer: its facts are what the reply should state) and `card`/`cards`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: questions file not found")
    if path.suffix != ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        plain: list[dict[str, Any]] = [{"question": line.strip()} for line in lines if line.strip()]
        if not plain:
            raise DataError(f"{path}: no questions")
        return plain
    errors: list[str] = []
    rows: list[dict[str, Any]] = []
    for n, obj in read_jsonl(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) or not obj["question"].strip():
            errors.append(f"{path.name}:{n}: needs a non-empty \"question\" string")
            continue
        bad = [key for key in ("label", "answer") if key in obj and not isinstance(obj[key], str)]
        if bad:
            errors.append(f"{path.name}:{n}: \"{bad[0]}\" must be a string")
            continue
        expected = obj.get("cards", [obj["card"]] if "card" in obj else None)
        if expected is not None and not (isinstance(expected, list)
                                         and all(isinstance(c, str | None) for c in expected)):
            errors.append(f"{path.name}:{n}: \"card\" must be a card id or null, \"cards\" a list of ids")
            continue
        rows.append({"question": obj["question"], "label": obj.get("label"), "answer": obj.get("answer"),
                     "cards": expected})
    if errors:
        raise DataError(problems(f"{path}: {len(errors)} bad line(s)", errors))
    return rows


def rules_for(persona: Persona) -> list[str]:
    """The rule names a persona's style can report (the columns of the per-rule table)."""
    s = persona.style
    rules = ["empty_reply", "not_ended", "leaked", "looped"]
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


def evaluate(engine: Engine, persona: Persona, questions: list[dict[str, Any]], params: SamplingParams,
             *, batch_size: int = 8, name: str = "", progress: bool = True, bank: bool = True) -> dict[str, Any]:
    """Generate a reply per question and score it; returns the per-model result dict.

    `bank=False` asks as the persona did before it had a knowledge bank (its story instruction, no cards
    in the prompt) and still checks each reply against the cards retrieval picks: how much the bank
    changes what a model states."""
    rules = rules_for(persona)
    asked = persona if bank or persona.knowledge is None else persona.model_copy(update={"knowledge": None})
    replies: list[dict[str, Any]] = []
    bar = tqdm(total=len(questions), desc=f"eval {name or engine.name}", disable=not progress)
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        groundings = [ground(persona, q["question"]) for q in chunk]
        convs = [build_messages(asked, [], q["question"], cards=g.cards if g and bank else None,
                                personality=g.person if g else persona.pick_personality(
                                    q["question"], None, random.Random(start + i)))
                 for i, (q, g) in enumerate(zip(chunk, groundings, strict=True))]
        completions = engine.generate_batch(convs, params)
        for q, done, g in zip(chunk, completions, groundings, strict=True):
            story = bool(g.cards) if g is not None and bank and persona.style.story else None
            violations = check_reply(done.text, persona, done.finish_reason, story=story)
            broken = {v.rule for v in violations}
            row: dict[str, Any] = {
                "question": q["question"], "reply": done.text, "finish_reason": done.finish_reason,
                "ended": done.finish_reason == "end_of_turn", "leaked": "leaked" in broken,
                "looped": "looped" in broken, "violations": [str(v) for v in violations], "ok": not violations}
            if g is not None:
                row["sources" if bank else "checked_against"] = [c.id for c in g.cards]
                row["faithful"], row["unsupported"] = faithfulness(persona, q["question"], done.text, g.cards)
                if q.get("cards") is not None:
                    row["expected_cards"] = q["cards"]
                    row["retrieved_top3"] = top3(persona, q["question"])
                    row["retrieval_hit"] = (any(c in row["retrieved_top3"] for c in q["cards"] if c)
                                            or (not any(q["cards"]) and not g.cards))
            if q.get("label") is not None:
                row["label"] = q["label"]
                row["predicted"] = parse_label(done.text, persona.labels or [q["label"]])
                row["correct"] = (row["predicted"] or "").lower() == q["label"].lower()
            if q.get("answer"):
                row["answer_facts"], row["answer_missing"] = answer_recall(q["question"], q["answer"], done.text)
            row["_rules"] = broken
            replies.append(row)
        bar.update(len(chunk))
    bar.close()
    n = len(replies)
    per_rule = {r: sum(r not in row["_rules"] for row in replies) / n for r in rules}
    for row in replies:
        del row["_rules"]
    labelled = [row for row in replies if "label" in row]
    return {
        "name": name or engine.name,
        "n": n,
        "compliance": sum(row["ok"] for row in replies) / n,
        "ended": sum(row["ended"] for row in replies) / n,
        "leaked": sum(row["leaked"] for row in replies) / n,
        "looped": sum(row["looped"] for row in replies) / n,
        "rules": per_rule,
        "accuracy": (sum(row["correct"] for row in labelled) / len(labelled)) if labelled else None,
        "faithful": _share(replies, "faithful"),
        "retrieval_top3": _share(replies, "retrieval_hit"),
        "answer_facts": _mean(replies, "answer_facts"),
        "sampling": params.model_dump(),
        "replies": replies,
    }


def _share(rows: list[dict[str, Any]], key: str) -> float | None:
    scored = [row[key] for row in rows if key in row]
    return sum(scored) / len(scored) if scored else None


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    scored = [row[key] for row in rows if row.get(key) is not None]
    return sum(scored) / len(scored) if scored else None


def answer_recall(question: str, answer: str, reply: str) -> tuple[float | None, list[str]]:
    """(share, missing): of the numbers and proper names the reference `answer` states beyond the question,
    the share the reply states too, and those it does not. None when the answer states no such fact."""
    wanted = unsupported(answer, [question])
    if not wanted:
        return None, []
    missing = unsupported(answer, [question, reply])
    return 1 - len(missing) / len(wanted), missing


def faithfulness(persona: Persona, question: str, reply: str, cards: list[Card]) -> tuple[bool, list[str]]:
    """(faithful, what is unsupported): every number and proper name in the factual part of `reply` (the
    story, or the whole reply) is stated by a retrieved card (or the question, or the persona's own
    prompt), and a story names its card's person. No card: a story-teller tells no story, and a reply
    states nothing the question did not."""
    assert persona.knowledge is not None
    story_mode = persona.knowledge.checked == "story"
    parts = paragraphs(reply)
    part = "\n\n".join(parts[1:]) if story_mode else reply
    allowed = [c.text for c in cards] + [question, persona.system_prompt, *persona.constraints, *persona.labels,
                                         persona.style.address or "", persona.name, persona.description]
    missing = unsupported(part, allowed)
    if story_mode and cards and part.strip():
        person = cards[0].person or ""
        if person and person.split()[-1].casefold() not in part.casefold():
            missing.append(f"the story never names {person}")
    if story_mode and not cards and part.strip():
        missing.append("a story although no card fitted")
    return not missing, missing


def top3(persona: Persona, question: str) -> list[str]:
    """The ids of the three best cards for `question` (a person it names restricts them), for hit@3."""
    assert persona.knowledge is not None
    bank = load_bank(persona.knowledge.bank)
    person = named_person(persona, bank, question, None)
    return [h.card.id for h in bank.search(question, k=3, person=person)]


def format_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per model. Every column says what its percentage counts: replies that
    met all rules, that ended, that leaked, that looped, that named the right label, the mean share of a
    reference answer's facts the replies state (answer facts), and each rule's pass rate."""
    rules = [r for r in dict.fromkeys(r for res in results for r in res["rules"])
             if r not in ("not_ended", "leaked", "looped")]
    head = ["model", "n", "all rules met", "ended", "leaked", "looped", "faithful", "card in top 3", "accuracy",
            "answer facts",
            *(pass_label(r) for r in rules)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        def pct(key: str, res: dict[str, Any] = res) -> str:
            return "–" if res.get(key) is None else f"{res[key]:.0%}"

        cells = [res["name"], str(res["n"]), f"{res['compliance']:.0%}", f"{res['ended']:.0%}",
                 f"{res['leaked']:.0%}", f"{res['looped']:.0%}", pct("faithful"), pct("retrieval_top3"),
                 pct("accuracy"), pct("answer_facts"),
                 *(f"{res['rules'][r]:.0%}" if r in res["rules"] else "–" for r in rules)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(results: list[dict[str, Any]], persona: Persona, questions_path: str, out: str | Path) -> Path:
    payload = {"persona": persona.id, "questions": str(questions_path), "models": results}
    return write_text(out, json.dumps(payload, indent=2, ensure_ascii=False))


def split_spec(spec: str, persona: Persona | None = None) -> tuple[str, str | None]:
    """The model and adapter a spec names, as the app would serve it.

    "light" -> ("light", the persona's adapter for light, if any); "light@none" -> ("light", None);
    "light@adapters/x" -> ("light", "adapters/x"). A model server (openai:URL#MODEL, whose URL may hold
    user@host) serves its own weights: it takes no adapter, and "@" in it is part of the URL.
    """
    from krishna_ai.runtime.remote import is_remote_spec

    if is_remote_spec(spec):
        return spec.removesuffix("@none"), None
    model, sep, adapter = spec.rpartition("@")
    if not sep:
        model = adapter
        return model, (persona.adapter_for(model) if persona else None)
    return model, (None if adapter.lower() == "none" else adapter)
