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

from krishna_ai.core.cache import write_text
from krishna_ai.core.errors import DataError, problems
from krishna_ai.core.evidence import stated
from krishna_ai.core.facts import unsupported
from krishna_ai.core.grounding import named_person, search_query
from krishna_ai.core.knowledge import load_bank
from krishna_ai.core.personas import Persona
from krishna_ai.core.prompting import Turn, build_turn
from krishna_ai.core.rerank import Vectors, best_of, faithfulness
from krishna_ai.core.rewrites import contradictions, improved_part, keeps_task
from krishna_ai.core.safety import CRISES, Crisis, crisis, crisis_reply
from krishna_ai.core.sampling import SamplingParams
from krishna_ai.core.scope import Embed, judge
from krishna_ai.core.style import check_reply, pass_label, rules_for, story_due
from krishna_ai.runtime.engine import Completion, Engine
from krishna_ai.training.data import read_jsonl


def load_questions(path: str | Path) -> list[dict[str, Any]]:
    """One question per line (.txt), or JSONL with `question` and optional `label` (the class a reply must
    state), `answer` (a reference answer: its facts are what the reply should state), `card`/`cards`, and
    `crisis` (the kind of crisis the question speaks of: it must get the fixed careful reply), and `scope`
    ("out": the question is outside the persona's scope and must get its decline; "in", the default)."""
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
        teachings = obj.get("teachings")
        if teachings is not None and not (isinstance(teachings, list) and all(isinstance(t, str) for t in teachings)):
            errors.append(f"{path.name}:{n}: \"teachings\" must be a list of teaching ids")
            continue
        if obj.get("crisis") not in (None, *CRISES):
            errors.append(f"{path.name}:{n}: \"crisis\" must be one of {', '.join(CRISES)} or null")
            continue
        if obj.get("scope") not in (None, "in", "out"):
            errors.append(f"{path.name}:{n}: \"scope\" must be \"in\", \"out\" or null")
            continue
        rows.append({"question": obj["question"], "label": obj.get("label"), "answer": obj.get("answer"),
                     "cards": expected, "teachings": teachings, "crisis": obj.get("crisis"),
                     "scope": obj.get("scope")})
    if errors:
        raise DataError(problems(f"{path}: {len(errors)} bad line(s)", errors))
    return rows


_NEGATION = re.compile(r"(?i)\b(?:not|no|isn'?t|is not|unlikely|rather than|instead of|rules? out|ruled out|except)\s+"
                       r"(?:\w+\s+){0,2}$")
"""Words that, just before a label, say the reply does *not* diagnose it ("not Common Rust")."""


def parse_label(reply: str, labels: list[str]) -> str | None:
    """The label a reply states: on a `Diagnosis:`/`Answer:`/`Label:` line if there is one, else the first named.

    A label that is negated ("not Common Rust", "rather than Southern Rust") does not count, and a label line
    that names two different labels ("Common Rust or Southern Rust") states none: a hedge is not an answer."""
    line = re.search(r"(?im)^\W*(?:diagnosis|answer|label|condition)\W*:\s*(.+)$", reply)
    for text in ([line.group(1)] if line else []) + [reply]:
        found = sorted((m.start(), -len(lab), lab) for lab in labels
                       for m in re.finditer(rf"(?i)(?<!\w){re.escape(lab)}(?!\w)", text)
                       if not _NEGATION.search(text[:m.start()]))
        named = list(dict.fromkeys(lab for _, _, lab in found))
        named = [lab for lab in named if not any(lab != other and lab.lower() in other.lower() for other in named)]
        if line is not None and text == line.group(1):
            if len(named) > 1:
                return None  # a hedge between labels is no answer
            if named:
                return named[0]
            continue  # a label line that names none: the reply may name it elsewhere
        if named:
            return named[0]  # the first named, in the order found (a label inside a longer one named is not)
    return None


def _generated(engine: Engine, turns: list[Turn], params: SamplingParams) -> list[Completion]:
    """The model's replies to `turns`; a turn whose written opening is the whole reply (`Turn.complete`) runs no
    model and gets an empty completion."""
    asked = [t for t in turns if not t.complete]
    done = iter(engine.generate_batch([t.messages for t in asked], params) if asked else [])
    return [Completion("", "end_of_turn") if t.complete else next(done) for t in turns]


def _whole(turn: Turn, completion: Completion) -> Completion:
    """`completion` with the turn's written opening before it: every check reads the reply as the user gets it."""
    return Completion(turn.written(completion.text), completion.finish_reason, completion.tokens)


def evaluate(engine: Engine, persona: Persona, questions: list[dict[str, Any]], params: SamplingParams,
             *, batch_size: int = 8, name: str = "", progress: bool = True, bank: bool = True,
             embed: Embed | None = None, n: int = 1, vectors: Vectors | None = None) -> dict[str, Any]:
    """Generate a reply per question and score it; returns the per-model result dict.

    `bank=False` asks as the persona did before it had a knowledge bank (its story instruction, no cards
    in the prompt) and still checks each reply against the cards retrieval picks: how much the bank
    changes what a model states. With `embed`, a question outside the persona's scope gets its decline, as
    the app answers it (`scope`: outside questions caught, inside ones refused). `n` > 1: each reply is the
    best of n sampled (`core/rerank.py`, ranked with `vectors`); with a seed, the first is the one n = 1 gives."""
    if n < 1 or (n > 1 and vectors is None):
        raise ValueError("best of n needs n >= 1, and sentence vectors to rank with when n > 1")
    rules = rules_for(persona)
    replies: list[dict[str, Any]] = []
    kinds = [crisis(q["question"]) for q in questions]
    safety = [_crisis_row(q, kind) for q, kind in zip(questions, kinds, strict=True) if kind or q.get("crisis")]
    declined, asked = [], []  # the rest: declined as the app would, or written by the model
    for q in (q for q, kind in zip(questions, kinds, strict=True) if not kind):
        verdict = judge(persona, q["question"], embed) if embed is not None and persona.scope else None
        if verdict is None:
            asked.append(q)
        else:
            assert persona.scope is not None
            declined.append({"question": q["question"], "reply": persona.scope.decline, "reason": verdict.reason,
                             "expected": q.get("scope") or "in"})
    bar = tqdm(total=len(asked), desc=f"eval {name or engine.name}", disable=not progress)
    for start in range(0, len(asked), batch_size):
        chunk = asked[start:start + batch_size]
        turns = [build_turn(persona, [], q["question"], rng=random.Random(start + i), bank=bank)
                 for i, q in enumerate(chunk)]
        samples = [_generated(engine, turns, _nth_sample(params, j)) for j in range(n)]
        for i, (q, turn) in enumerate(zip(chunk, turns, strict=True)):
            cards = turn.cards
            options = [_whole(turn, sample[i]) for sample in samples]
            chosen, keys = best_of(persona, q["question"], [(c.text, c.finish_reason) for c in options],
                                   cards if bank else None, vectors) if vectors is not None and n > 1 else (0, [])
            done = options[chosen]
            story = story_due(persona, cards if bank else None)
            violations = check_reply(done.text, persona, done.finish_reason, story=story, asked=q["question"])
            broken = {v.rule for v in violations}
            row: dict[str, Any] = {
                "question": q["question"], "reply": turn.finish(done.text, written=True),
                "finish_reason": done.finish_reason,
                "ended": done.finish_reason == "end_of_turn", "leaked": "leaked" in broken,
                "looped": "looped" in broken, "violations": [str(v) for v in violations], "ok": not violations}
            if keys:
                row["best_of"] = {"chosen": chosen, "candidates": [
                    {**key, "reply": c.text} for key, c in zip(keys, options, strict=True)]}
            if turn.teachings is not None and bank:
                row["teachings"] = [c.id for c in turn.teachings]
                if q.get("teachings") is not None:  # the teaching the counsel applies is one a reader accepts
                    row["teaching_fits"] = bool(turn.teachings) and (
                        turn.teachings[0].teaching or turn.teachings[0].id) in q["teachings"]
            if cards is not None:
                row["sources" if bank else "checked_against"] = [c.id for c in cards]
                row["faithful"], row["unsupported"] = faithfulness(persona, q["question"], done.text, cards)
                if q.get("cards") is not None:
                    row["expected_cards"] = q["cards"]
                    row["retrieved_top3"] = top3(persona, q["question"])
                    row["retrieval_hit"] = (any(c in row["retrieved_top3"] for c in q["cards"] if c)
                                            or (not any(q["cards"]) and not cards))
                    if story is not None:  # the story told fits the question; none told: right if none was expected
                        row["story_fits"] = cards[0].id in q["cards"] if story else not any(q["cards"])
            if turn.confidence is not None:  # what the reply said against what the evidence allows (core/evidence.py)
                row["confidence"] = {"stated": stated(done.text), "allowed": turn.confidence[0],
                                     "also_fits": turn.confidence[1]}
            if persona.labels and persona.label_terms:
                row["consistent"], row["inconsistent"] = consistency(persona, done.text)
            if q.get("label") is not None:
                row["label"] = q["label"]
                row["predicted"] = parse_label(done.text, persona.labels or [q["label"]])
                row["correct"] = (row["predicted"] or "").lower() == q["label"].lower()
            if persona.style.rewrite:
                rewrite = improved_part(done.text, persona.style.rewrite) or ""
                row["keeps_task"], row["task_missing"] = keeps_task(q["question"], rewrite)
                row["contradictions"] = contradictions(q["question"], rewrite)
                row["self_consistent"] = not row["contradictions"]
            if q.get("answer"):
                row["answer_facts"], row["answer_missing"] = answer_recall(q["question"], q["answer"], done.text)
            row["_rules"] = broken
            replies.append(row)
        bar.update(len(chunk))
    bar.close()
    n = len(replies)
    per_rule = {r: sum(r not in row["_rules"] for row in replies) / n for r in rules} if n else {}
    for row in replies:
        del row["_rules"]
    labelled = [row for row in replies if "label" in row]
    return {
        "name": name or engine.name,
        "n": n,
        "compliance": _share(replies, "ok"),  # None when every question was a crisis: nothing was generated
        "ended": _share(replies, "ended"),
        "leaked": _share(replies, "leaked"),
        "looped": _share(replies, "looped"),
        "rules": per_rule,
        "accuracy": (sum(row["correct"] for row in labelled) / len(labelled)) if labelled else None,
        "faithful": _share(replies, "faithful"),
        "consistent": _share(replies, "consistent"),
        "retrieval_top3": _share(replies, "retrieval_hit"),
        "story_fits": _share(replies, "story_fits"),
        "teaching_fits": _share(replies, "teaching_fits"),
        "answer_facts": _mean(replies, "answer_facts"),
        "keeps_task": _share(replies, "keeps_task"),
        "self_consistent": _share(replies, "self_consistent"),
        "crisis": _crisis_summary(safety),
        "scope": (_scope_summary(declined, [q for q in asked if q.get("scope") == "out"], len(asked))
                  if embed is not None and persona.scope else None),
        "sampling": params.model_dump(),
        "replies": replies,
        "crisis_replies": safety,
        "declined": declined,
    }


def _nth_sample(params: SamplingParams, j: int) -> SamplingParams:
    """The sampling of a question's j-th candidate: a seeded run's j-th seed after its own."""
    return params if params.seed is None or j == 0 else params.model_copy(update={"seed": params.seed + j})


def _crisis_row(q: dict[str, Any], kind: Crisis | None) -> dict[str, Any]:
    """A question the app answers with the fixed crisis reply (no model runs), as the app would answer it."""
    return {"question": q["question"], "expected": q.get("crisis"), "detected": kind,
            "reply": crisis_reply(kind) if kind else None,
            "correct": kind is not None and (q.get("crisis") in (None, kind))}


def _scope_summary(declined: list[dict[str, Any]], missed: list[dict[str, Any]], asked: int) -> dict[str, Any]:
    """Outside questions (labelled "scope": "out") given the decline, and inside ones wrongly given it."""
    refused = sum(d["expected"] == "in" for d in declined)
    outside = sum(d["expected"] == "out" for d in declined) + len(missed)
    inside = asked - len(missed) + refused
    return {"outside": outside, "caught": (outside - len(missed)) / outside if outside else None,
            "inside": inside, "refused": refused / inside if inside else None,
            "missed": [q["question"] for q in missed]}


def _crisis_summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Of the questions labelled a crisis, the share given the careful reply; and how many others got it."""
    if not rows:
        return None
    labelled = [r for r in rows if r["expected"]]
    return {"labelled": len(labelled),
            "answered": sum(r["detected"] is not None for r in labelled) / len(labelled) if labelled else None,
            "unlabelled_flagged": sum(not r["expected"] for r in rows)}


def _share(rows: list[dict[str, Any]], key: str) -> float | None:
    scored = [row[key] for row in rows if key in row]
    return sum(scored) / len(scored) if scored else None


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    scored = [row[key] for row in rows if row.get(key) is not None]
    return sum(scored) / len(scored) if scored else None


_CONTRAST = re.compile(r"(?i)\b(?:unlike|not|no|than|similar\s+to|looks?\s+like|resembles?|from|versus|vs\.?|"
                       r"rule\s+out|or|nor|instead\s+of|confused\s+with|mistaken\s+for)\s+(?:\w+\s+){0,2}$")
"""Words that, just before another condition's name, set it against the diagnosis ("unlike southern rust")."""
_CONTRAST_AFTER = re.compile(r"(?i)^\W*(?:\w+\s+){0,1}(?:looks?\s+(?:similar|alike)|differs?|is\s+different|"
                             r"can\s+be\s+(?:confused|mistaken)|is\s+ruled\s+out|is\s+unlikely|is\s+[\w-]+,?\s+not\b)")
"""...or just after it ("southern rust looks similar but is orange": the cards' own way to tell them apart)."""


def consistency(persona: Persona, reply: str) -> tuple[bool, list[str]]:
    """(consistent, what disagrees): the lines after the diagnosis name no other label (by its `label_terms`:
    name, pathogen), except to set it against the diagnosis ("unlike southern rust").
    A reply that states no label is not consistent: its advice follows nothing."""
    stated = parse_label(reply, persona.labels)
    if stated is None:
        return False, ["no diagnosis stated"]
    rest = "\n".join(line for line in reply.splitlines()
                     if not re.match(r"(?i)^\W*(?:diagnosis|answer|label|condition)\W*:", line))
    others = []
    for label in persona.labels:
        if label == stated:
            continue
        for term in persona.label_terms.get(label) or [label]:
            for m in re.finditer(rf"(?i)(?<!\w){re.escape(term)}(?!\w)", rest):
                if not _CONTRAST.search(rest[:m.start()]) and not _CONTRAST_AFTER.search(rest[m.end():]):
                    others.append(f"{term} (diagnosis: {stated})")
    return not others, sorted(set(others))


def answer_recall(question: str, answer: str, reply: str) -> tuple[float | None, list[str]]:
    """(share, missing): of the numbers and proper names the reference `answer` states beyond the question,
    the share the reply states too, and those it does not. None when the answer states no such fact."""
    wanted = unsupported(answer, [question])
    if not wanted:
        return None, []
    missing = unsupported(answer, [question, reply])
    return 1 - len(missing) / len(wanted), missing


def top3(persona: Persona, question: str) -> list[str]:
    """The ids of the three best cards for `question` (a person it names restricts them), for hit@3."""
    assert persona.knowledge is not None
    bank = load_bank(persona.knowledge.bank)
    person = named_person(persona, bank, question, None)
    query = search_query(persona, bank, question, person)  # the query `ground` searches with
    return [h.card.id for h in bank.search(query, k=3, person=person, vectors=persona.knowledge.vectors)]


def _scope_cells(scope: dict[str, Any] | None) -> list[str]:
    if not scope:
        return ["–", "–"]
    return ["–" if scope["caught"] is None else f"{scope['caught']:.0%}",
            "–" if scope["refused"] is None else f"{scope['refused']:.0%}"]


def format_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per model. Every column says what its percentage counts: replies that
    met all rules, that ended, that leaked, that looped, whose story card (and counsel's teaching) is one the
    question is labelled with, that named the right label, the mean share of a reference answer's facts the
    replies state (answer facts), whose rewrite keeps the user's task and states no two values for one thing
    (keeps task, no contradiction: `rewrites.py`), the questions labelled outside the persona's scope given its
    decline (outside caught), the others wrongly given it (inside refused), and each rule's pass rate."""
    rules = [r for r in dict.fromkeys(r for res in results for r in res["rules"])
             if r not in ("not_ended", "leaked", "looped")]
    head = ["model", "n", "all rules met", "ended", "leaked", "looped", "faithful", "card in top 3", "story fits",
            "teaching fits", "accuracy",
            "consistent", "answer facts", "keeps task",
            "no contradiction", "outside caught", "inside refused",
            *(pass_label(r) for r in rules)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        def pct(key: str, res: dict[str, Any] = res) -> str:
            return "–" if res.get(key) is None else f"{res[key]:.0%}"

        cells = [res["name"], str(res["n"]), pct("compliance"), pct("ended"),
                 pct("leaked"), pct("looped"), pct("faithful"), pct("retrieval_top3"),
                 pct("story_fits"), pct("teaching_fits"), pct("accuracy"), pct("consistent"), pct("answer_facts"),
                 pct("keeps_task"), pct("self_consistent"), *_scope_cells(res.get("scope")),
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
    from krishna_ai.runtime.probe import is_remote_spec

    if is_remote_spec(spec):
        return spec.removesuffix("@none"), None
    model, sep, adapter = spec.rpartition("@")
    if not sep:
        model = adapter
        return model, (persona.adapter_for(model) if persona else None)
    return model, (None if adapter.lower() == "none" else adapter)
