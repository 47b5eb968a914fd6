"""The Evaluate tab: `eval` on a persona's held-out questions for one or two models, as a job (one at a time,
in its own process); the table as the README shows it, and each reply with its verdict on every rule.

The run is `python -m krishna_ai eval --persona P --questions data/P/heldout.jsonl --model A [--model B]
--json <job>/results.json`; the job's log shows it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from krishna_ai.core.errors import KrishnaError
from krishna_ai.history.jobs import Job
from krishna_ai.studio import workbench
from krishna_ai.studio.job_view import build_job_view, runner, wire_job_view
from krishna_ai.studio.saving import gr_error, user_of
from krishna_ai.studio.service import Studio

NO_ADAPTER = "@none"


def eval_personas(studio: Studio) -> list[tuple[str, str]]:
    return [(p.name, p.id) for p in studio.personas.values() if workbench.heldout(p.id).is_file()]


def eval_choices(model_choices: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each offered model with the persona's adapter, and without (`MODEL@none`; a named adapter is kept)."""
    out: list[tuple[str, str]] = []
    for label, spec in model_choices:
        out.append((label, spec))
        if "@" not in spec and not spec.startswith("openai:"):
            out.append((f"{label} · no adapter", spec + NO_ADAPTER))
    return out


def load_results(job: Job) -> dict[str, Any] | None:
    path = Path(job.result.get("results") or Path(job.folder) / "results.json")
    try:
        return json.loads(path.read_text(encoding="utf-8")) if job.status == "done" and path.is_file() else None
    except (OSError, ValueError):
        return None


def transposed(table: str) -> str:
    """`eval`'s Markdown table with a row per measure and a column per model: one or two models read down."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.strip().splitlines()
            if line.strip().startswith("|") and not set(line.strip()) <= set("|-: ")]
    if not rows:
        return table
    columns = list(zip(*rows, strict=True))
    out = ["| " + " | ".join(columns[0]) + " |", "|" + "---|" * len(columns[0])]
    return "\n".join(out + ["| " + " | ".join(c) + " |" for c in columns[1:]])


def replies_markdown(results: dict[str, Any]) -> str:
    """Each question with every model's reply under it, and the reply's verdict: ok, or the rules it broke,
    and whether it stated only its cards' facts (what it stated beyond them)."""
    asked: dict[str, list[str]] = {}
    for model in results.get("models", []):
        for r in model.get("replies", []):
            verdict = "✅ ok" if r.get("ok") else "❌ " + "; ".join(r.get("violations") or [])
            if r.get("faithful") is not None:
                verdict += (" · only its cards' facts" if r["faithful"] else
                            " · beyond its cards: " + "; ".join(r.get("unsupported") or [])[:300])
            asked.setdefault(r["question"], []).append(f"**{model['name']}** — {verdict}\n\n> " +
                                                       r["reply"].strip().replace("\n", "\n> "))
        for r in model.get("declined", []) + model.get("crisis_replies", []):
            kind = "declined: outside the persona's scope" if "reason" in r else "the crisis reply"
            asked.setdefault(r["question"], []).append(f"**{model['name']}** — {kind}\n\n> {r.get('reply') or ''}")
    return "\n\n".join(f"#### {n}. {q}\n\n" + "\n\n".join(answers)
                       for n, (q, answers) in enumerate(asked.items(), 1))


def model_boxes(model_choices: list[tuple[str, str]]) -> list[gr.Dropdown]:
    """Updates of the tab's two model lists (model B may be left out)."""
    choices = eval_choices(model_choices)
    return [gr.Dropdown(choices=choices), gr.Dropdown(choices=[("— (one model)", ""), *choices])]


def build_eval_tab(studio: Studio, model_choices: list[tuple[str, str]], persona: str
                   ) -> tuple[gr.Timer, list[gr.Dropdown]]:
    """The tab's widgets and events (inside the Tab); returns its timer and its two model lists."""
    personas = eval_personas(studio)
    choices = eval_choices(model_choices)
    gr.Markdown("Evaluate one or two models on a persona's held-out questions: every rule of its style, whether "
                "replies end, stay in persona and state their cards' facts.")
    with gr.Row():
        persona_dd = gr.Dropdown(personas, value=persona if any(p == persona for _, p in personas) else None,
                                 label="Persona (with held-out questions)", elem_id="eval-persona")
        model_a = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Model A",
                              elem_id="eval-model-a")
        model_b = gr.Dropdown([("— (one model)", ""), *choices], value="", label="Model B", elem_id="eval-model-b")
        limit = gr.Number(5, label="Questions (0: all)", precision=0, minimum=0, elem_id="eval-limit")
        start = gr.Button("Start evaluation", variant="primary", elem_id="eval-start")
    view = build_job_view(studio, "eval")
    table = gr.Markdown("", elem_id="eval-table")
    replies = gr.Markdown("", elem_id="eval-replies")
    shown = gr.State("")

    def extra(job: Job, progress: dict[str, Any], drawn: str) -> list[Any]:
        if drawn == f"{job.id}:{job.status}":
            return [gr.skip(), gr.skip(), drawn]
        results = load_results(job)
        if results is None:
            return ["", "", f"{job.id}:{job.status}"]
        from krishna_ai.training.evaluate import format_table

        return [transposed(format_table(results["models"])), replies_markdown(results), f"{job.id}:{job.status}"]

    refresh = wire_job_view(studio, view, extra, [table, replies, shown], shown)

    def submit(persona_id: str, a: str, b: str, n: float | None, request: gr.Request) -> list[Any]:
        try:
            params = {"persona": persona_id, "models": [m for m in (a, b) if m], "limit": int(n or 0) or None}
            job = runner(studio, request).submit(user_of(request), "eval", params)
            gr.Info(f"Job {job.id} queued: {job.title}")
            return refresh(job.id, "", request)
        except KrishnaError as exc:
            raise gr_error(exc) from None

    start.click(submit, [persona_dd, model_a, model_b, limit],
                [view.table, view.chosen, view.status, view.stop, view.resume, view.log, table, replies, shown],
                queue=False)
    return view.timer, [model_a, model_b]
