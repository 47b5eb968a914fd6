"""The Grade tab: blind grading of held-out replies in the browser (training/grading.py does the work).

Pick a persona and the eval results to grade (those beside its adapters, or uploaded `eval --out` files); the
replies of every model in them come shuffled and without model names, one at a time, to be graded good /
weak / bad against the persona's written rubric (data/grades/<persona>-rubric.md), with a note. Each grade is
written to the sheet at once, so a grading left half-way is resumed from "Your sheets"; when the last reply
is graded the key is opened and the summary per model is shown. Sheets are kept per user under
<data dir>/grades/<user>/ (the same files `python -m krishna_ai grade summary` reads).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gradio as gr

from krishna_ai.core.errors import KrishnaError
from krishna_ai.history.schema import data_root
from krishna_ai.studio.saving import gr_error, uploaded, user_of
from krishna_ai.studio.service import Studio
from krishna_ai.training.grading import GRADES, eval_files, format_summary, grade, prepare, rubric_for, summary

LABELS = {"good": "✅ Good", "weak": "➖ Weak", "bad": "❌ Bad"}


def sheets_dir(studio: Studio, user: str) -> Path:
    """The user's own grading folder: a readable slug of the name and a hash (two names never share one)."""
    root = studio.store.data_dir if studio.store is not None else data_root()
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", user)[:40]
    return root / "grades" / f"{slug}-{hashlib.sha256(user.encode()).hexdigest()[:8]}"


def _sheets(studio: Studio, user: str) -> list[str]:
    folder = sheets_dir(studio, user)
    return sorted((p.name for p in folder.glob("*.json") if not p.name.endswith(".key.json")), reverse=True)


def _eval_choices(studio: Studio, persona_id: str) -> list[tuple[str, str]]:
    out = []
    for path in eval_files(studio.persona(persona_id)):
        try:
            names = [m["name"] for m in json.loads(path.read_text(encoding="utf-8")).get("models", [])]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out.append((f"{path.parent.name}/{path.name} ({', '.join(names)})", str(path)))
    return out


def _rubric_text(persona_id: str) -> str:
    path = rubric_for(persona_id)
    return path.read_text(encoding="utf-8") if path else "No written rubric for this persona yet."


def _next(sheet: dict[str, Any], after: int) -> int | None:
    """The first reply not graded yet, looking from `after` on and then from the start."""
    replies = sheet["replies"]
    order = list(range(after, len(replies))) + list(range(after))
    return next((i for i in order if replies[i]["grade"] is None), None)


def _show(path: Path, index: int | None) -> tuple:
    """(position, question, reply, note, summary, index) for the reply at `index`; the summary when all are done."""
    sheet = json.loads(path.read_text(encoding="utf-8"))
    replies = sheet["replies"]
    graded = sum(r["grade"] is not None for r in replies)
    if index is None:
        table = format_summary(summary(path))
        return (f"All {len(replies)} replies graded. The key is open now:", "", "", "",
                f"### Summary per model\n\n{table}", None)
    row = replies[index]
    done = f" · graded {row['grade']}" if row["grade"] else ""
    return (f"Reply {index + 1} of {len(replies)} · {graded} graded{done}", f"**Question:** {row['question']}",
            row["reply"], row.get("note", ""), "", index)


def build_grade_tab(studio: Studio, persona: str, tab: gr.Tab) -> gr.Dropdown:
    """The Grade tab's widgets and events (inside `tab`); returns its persona list."""
    gr.Markdown("Grade held-out replies blind: shuffled, without model names, against the persona's written "
                "rubric. Each grade is saved at once; the key opens when the last reply is graded.")
    with gr.Row():
        persona_dd = gr.Dropdown([(p.name, p.id) for p in studio.personas.values()], value=persona,
                                 label="Persona to grade", elem_id="grade-persona")
        limit = gr.Slider(1, 50, value=10, step=1, label="Questions (each answered by every model)",
                          elem_id="grade-limit")
    evals = gr.CheckboxGroup(_eval_choices(studio, persona), label="Eval results beside the persona's adapters",
                             elem_id="grade-evals")
    upload = gr.File(label="…or upload eval results (python -m krishna_ai eval --out x.json)", file_count="multiple",
                     file_types=[".json"], elem_id="grade-upload")
    with gr.Row():
        start = gr.Button("Start a blind grading", variant="primary", elem_id="grade-start")
        sheets = gr.Dropdown([], label="Your sheets", elem_id="grade-sheets", scale=2)
        open_btn = gr.Button("Open", elem_id="grade-open")
    with gr.Accordion("Rubric", open=False):
        rubric_md = gr.Markdown(_rubric_text(persona), elem_id="grade-rubric")
    position = gr.Markdown(elem_id="grade-position")
    question_md = gr.Markdown(elem_id="grade-question")
    reply_md = gr.Markdown(elem_id="grade-reply", min_height=100)
    note = gr.Textbox(label="Why (optional)", elem_id="grade-note")
    with gr.Row():
        buttons = [gr.Button(LABELS[g], elem_id=f"grade-{g}") for g in GRADES]
        back = gr.Button("◀ Back", elem_id="grade-back")
    summary_md = gr.Markdown(elem_id="grade-summary")
    sheet_name = gr.State(None)
    index = gr.State(None)
    shown = [position, question_md, reply_md, note, summary_md, index]

    def on_persona(persona_id: str):
        return gr.CheckboxGroup(choices=_eval_choices(studio, persona_id), value=[]), _rubric_text(persona_id)

    persona_dd.change(on_persona, persona_dd, [evals, rubric_md], queue=False)

    def own(request: gr.Request, name: str | None) -> Path:
        folder = sheets_dir(studio, user_of(request))
        if not name or name not in _sheets(studio, user_of(request)):
            raise gr.Error("Pick one of your sheets, or start a grading.")
        return folder / name

    def on_load(request: gr.Request):
        return gr.Dropdown(choices=_sheets(studio, user_of(request)))

    def on_start(persona_id: str, chosen: list[str], files: list[Any] | None, n: float, request: gr.Request):
        offered = {v for _, v in _eval_choices(studio, persona_id)}
        paths = [p for p in chosen or [] if p in offered]  # never a path the client made up
        try:
            paths += [uploaded(f if isinstance(f, str) else getattr(f, "path", None) or f["path"], "an eval file")
                      or "" for f in files or []]
            if not paths:
                raise gr.Error("Choose at least one eval result (or upload one).")
            rubric = rubric_for(persona_id)
            if rubric is None:
                raise gr.Error(f"There is no written rubric for {persona_id!r}: "
                               f"add data/grades/{persona_id}-rubric.md.")
            folder = sheets_dir(studio, user_of(request))
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
            sheet, _ = prepare(paths, rubric, folder / f"{persona_id}-{stamp}.json",
                               seed=int.from_bytes(stamp.encode()[-4:], "big"), limit=int(n))
        except KrishnaError as exc:
            raise gr_error(exc) from None
        return (gr.Dropdown(choices=_sheets(studio, user_of(request)), value=sheet.name), sheet.name,
                *_show(sheet, 0))

    start.click(on_start, [persona_dd, evals, upload, limit], [sheets, sheet_name, *shown])

    def on_open(name: str | None, request: gr.Request):
        path = own(request, name)
        sheet = json.loads(path.read_text(encoding="utf-8"))
        return (name, *_show(path, _next(sheet, 0)))

    open_btn.click(on_open, sheets, [sheet_name, *shown], queue=False)

    for value, button in zip(GRADES, buttons, strict=True):
        def on_grade(name: str | None, i: int | None, why: str, request: gr.Request, value: str = value):
            path = own(request, name)
            if i is None:
                raise gr.Error("Every reply of this sheet is graded; start another or open one.")
            sheet_now = json.loads(path.read_text(encoding="utf-8"))
            try:
                sheet_now = grade(path, sheet_now["replies"][int(i)]["id"], value, why)
            except KrishnaError as exc:
                raise gr_error(exc) from None
            return _show(path, _next(sheet_now, int(i) + 1))

        button.click(on_grade, [sheet_name, index, note], shown, queue=False)

    def on_back(name: str | None, i: int | None, request: gr.Request):
        path = own(request, name)
        total = len(json.loads(path.read_text(encoding="utf-8"))["replies"])
        return _show(path, max(0, (total if i is None else int(i)) - 1))

    back.click(on_back, [sheet_name, index], shown, queue=False)
    tab.select(on_load, None, sheets, queue=False)  # the user's sheets, fresh each time the tab is opened
    return persona_dd
