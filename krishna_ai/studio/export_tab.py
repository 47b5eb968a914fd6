"""The Export tab: an adapter (a training job's, or a persona's shipped one) merged into its base model, then
GGUF (read back after writing), an Ollama Modelfile, a Space bundle and a Hub upload folder (`push --dry-run`;
nothing leaves the machine), as one job; the files it made offered for download.

The job runs `merge`, `export gguf`, `export modelfile`, `space` and `push --dry-run`, the README's commands
(its log shows each).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from krishna_ai.core.errors import KrishnaError
from krishna_ai.history.jobs import Job
from krishna_ai.runtime.tiers import split_model
from krishna_ai.studio import workbench
from krishna_ai.studio.job_view import build_job_view, runner, wire_job_view
from krishna_ai.studio.saving import gr_error, user_of
from krishna_ai.studio.service import Studio

TARGETS = [("GGUF (llama.cpp, read back after writing)", "gguf"), ("Ollama Modelfile", "modelfile"),
           ("Hugging Face Space folder", "space"), ("Hub upload folder (dry run)", "hub")]


def adapter_choices(studio: Studio) -> list[tuple[str, str]]:
    """`MODEL@ADAPTER` of every adapter there is to export: the trained ones, then each persona's own."""
    out = [(label, spec) for spec, label in studio.trained.items()]
    for p in studio.personas.values():
        for model, path in p.adapters.items():
            if Path(path).is_dir() and not str(path).endswith(".gguf"):
                out.append((f"{p.name} · {model} · {Path(path).name}", f"{model}@{path}"))
    return out


def downloadable(job: Job) -> list[str]:
    """The files a finished export made (the merged model's weights apart: they stay in the job's folder), as
    links in the system's temporary folder: Gradio serves a copy of them to this page only (by a content hash),
    and the jobs folder itself is never served (it also holds logs and everyone's feedback export)."""
    if job.status != "done":
        return []
    out = Path(tempfile.gettempdir()) / "krishna_ai-exports" / job.id
    out.mkdir(parents=True, exist_ok=True)
    shown = []
    for name in (Path(f) for f in job.result.get("files", [])):
        if not name.is_file():
            continue
        target = out / name.name
        if not target.exists():
            try:
                os.link(name, target)  # no copy where the two folders share a file system
            except OSError:
                shutil.copy2(name, target)
        shown.append(str(target))
    return shown


def build_export_tab(studio: Studio, persona: str) -> tuple[gr.Timer, gr.Dropdown, Any]:
    """The tab's widgets and events (inside the Tab); returns its timer, adapter list and that list's choices."""
    choices = adapter_choices(studio)
    gr.Markdown("Export an adapter: merged into its base model, then the formats you tick. Each export is a job; "
                "its files are offered below when it is done.")
    with gr.Row():
        source = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Adapter", scale=3,
                             elem_id="export-adapter")
        persona_dd = gr.Dropdown([(p.name, p.id) for p in studio.personas.values()], value=persona,
                                 label="Persona (its Modelfile and Space)", elem_id="export-persona")
    with gr.Row():
        targets = gr.CheckboxGroup(TARGETS, value=["gguf", "modelfile"], label="Make", elem_id="export-targets")
        outtype = gr.Radio(list(workbench.OUTTYPES), value="q8_0", label="GGUF tensor type", elem_id="export-outtype")
        start = gr.Button("Start export", variant="primary", elem_id="export-start")
    view = build_job_view(studio, "export")
    files = gr.File(label="Files", file_count="multiple", interactive=False, elem_id="export-files")
    shown = gr.State("")

    def extra(job: Job, progress: dict[str, Any], drawn: str) -> list[Any]:
        key = f"{job.id}:{job.status}"
        return [gr.skip(), drawn] if key == drawn else [downloadable(job) or None, key]

    refresh = wire_job_view(studio, view, extra, [files, shown], shown)

    def submit(spec: str, persona_id: str, make: list[str], kind: str, request: gr.Request) -> list[Any]:
        try:
            base, adapter = split_model(spec or "")
            params = {"base": base, "adapter": adapter or "", "persona": persona_id, "targets": list(make or []),
                      "outtype": kind}
            job = runner(studio, request).submit(user_of(request), "export", params)
            gr.Info(f"Job {job.id} queued: {job.title}")
            return refresh(job.id, "", request)
        except KrishnaError as exc:
            raise gr_error(exc) from None

    start.click(submit, [source, persona_dd, targets, outtype],
                [view.table, view.chosen, view.status, view.stop, view.resume, view.log, files, shown], queue=False)
    return view.timer, source, lambda: adapter_choices(studio)
