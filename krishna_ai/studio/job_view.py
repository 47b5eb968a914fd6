"""What the Train, Evaluate and Export tabs share: a job list, the chosen job's state, Stop and Resume, its log,
refreshed every second by a timer; and the job API.

    Client(url).predict("train", {"recipe": "krishna-light.yaml", "max_steps": 2}, api_name="/job_start")
    Client(url).predict(api_name="/jobs")                   # every job, newest first
    Client(url).predict(job_id, api_name="/job")            # one job with its progress and log
    Client(url).predict(job_id, api_name="/job_stop")       # also /job_resume

Jobs change what the server runs and read its files, so every handler and endpoint here is for
`Studio.admins` only (the tabs are hidden from others too, but a hidden tab is not a lock).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from krishna_ai.core.errors import InputError, KrishnaError
from krishna_ai.history import jobs as db
from krishna_ai.history.jobs import Job
from krishna_ai.studio import workbench
from krishna_ai.studio.saving import gr_error, user_of
from krishna_ai.studio.service import Studio

TICK = 1.0
"""Seconds between refreshes of a job's view (a logged training step reaches the page within about this)."""
HEADERS = ["job", "what", "status", "progress", "by", "started"]
ICONS = {"queued": "⏳", "running": "▶️", "done": "✅", "failed": "❌", "stopped": "⏹", "interrupted": "⚠️"}


class NotAdmin(InputError):
    """Jobs are for the app's admins."""


def runner(studio: Studio, request: gr.Request | None) -> Any:
    """The job runner, for an admin; NotAdmin or InputError (no database) otherwise."""
    if not studio.may_admin(user_of(request)):
        raise NotAdmin("only the app's admins (--admin) may see and run training, evaluation and export jobs")
    if studio.jobs is None:
        raise InputError("jobs are kept in the history database, which is off here (see the server's log)")
    return studio.jobs


def job_payload(studio: Studio, job: Job, *, progress: bool = False) -> dict[str, Any]:
    out = {"id": job.id, "kind": job.kind, "title": job.title, "status": job.status, "user": job.user,
           "params": job.params, "commands": [" ".join(["python -m krishna_ai", *c]) for c in job.commands],
           "error": job.error, "result": job.result, "resumable": resumable(job),
           "created_at": job.created_at.isoformat() if job.created_at else None,
           "started_at": job.started_at.isoformat() if job.started_at else None,
           "finished_at": job.finished_at.isoformat() if job.finished_at else None}
    if progress:
        out["progress"] = studio.jobs.progress(job)
    return out


def resumable(job: Job) -> bool:
    """Whether Resume applies now (judged from the run's folder: a checkpoint may arrive after the job ended)."""
    return job.status in ("stopped", "interrupted") and workbench.resumable(job)


def _progress_cell(studio: Studio, job: Job) -> str:
    if job.status != "running":
        return ""
    p = studio.jobs.progress(job)
    if p.get("max_steps"):
        return f"step {p['step']}/{p['max_steps']}"
    if p.get("commands"):
        return f"command {p['command']}/{p['commands']}"
    return ""


def rows(studio: Studio, kind: str) -> list[list[Any]]:
    return [[j.id, j.title, f"{ICONS.get(j.status, '')} {j.status}", _progress_cell(studio, j), j.user,
             (j.started_at or j.created_at).strftime("%Y-%m-%d %H:%M") if (j.started_at or j.created_at) else ""]
            for j in db.jobs(studio.jobs.store, kind, limit=50)]


def status_line(job: Job, progress: dict[str, Any]) -> str:
    line = f"**{job.title}** — {ICONS.get(job.status, '')} {job.status}"
    if progress.get("max_steps"):
        line += f" · step {progress['step']} of {progress['max_steps']}"
        if progress.get("steps"):
            line += f" · loss {progress['steps'][-1]['loss']:.4f}"
    elif job.status == "running" and progress.get("commands"):
        line += f" · command {progress['command']} of {progress['commands']}"
        if progress.get("fraction") is not None:
            line += f" ({progress['fraction']:.0%})"
    if job.error and job.status != "done":
        line += f"\n\n{job.error}"
    return line


@dataclass
class JobView:
    """The widgets of one tab's job list and chosen job."""

    kind: str
    table: gr.Dataframe
    chosen: gr.Dropdown
    status: gr.Markdown
    stop: gr.Button
    resume: gr.Button
    log: gr.Textbox
    timer: gr.Timer


def build_job_view(studio: Studio, kind: str) -> JobView:
    """The widgets (call inside the tab); `wire_job_view` gives them their events."""
    table = gr.Dataframe(headers=HEADERS, value=[], interactive=False, label="Jobs (newest first)", wrap=True,
                         column_widths=["13%", "41%", "13%", "13%", "7%", "13%"], elem_id=f"{kind}-jobs")
    chosen = gr.Dropdown([], label="Job", elem_id=f"{kind}-job", allow_custom_value=False)
    status = gr.Markdown("", elem_id=f"{kind}-job-status")
    with gr.Row():
        stop = gr.Button("Stop", variant="stop", interactive=False, elem_id=f"{kind}-job-stop")
        resume = gr.Button("Resume", interactive=False, elem_id=f"{kind}-job-resume")
    log = gr.Textbox(label="Log", lines=10, max_lines=10, autoscroll=True, interactive=False,
                     elem_id=f"{kind}-job-log")
    return JobView(kind, table, chosen, status, stop, resume, log, gr.Timer(TICK, active=False))


def wire_job_view(studio: Studio, view: JobView, extra: Callable[[Job, dict[str, Any], str], list[Any]],
                  extra_outputs: list[Any], drawn: gr.State) -> Callable[[str | None, str, gr.Request], list[Any]]:
    """Events of a job view. `extra(job, progress, drawn)` gives the tab's own outputs for the chosen job (its
    plot, table, files), `drawn` being what they show now (a State the tab keeps, so unchanged outputs are
    skipped). Returns the refresh function (job id, drawn, request -> every output), for the tab's Start."""
    outputs = [view.table, view.chosen, view.status, view.stop, view.resume, view.log, *extra_outputs]

    def refresh(job_id: str | None, shown: str, request: gr.Request) -> list[Any]:
        run = runner(studio, request)
        listed = rows(studio, view.kind)
        choices = [(f"{r[0]} · {r[1]}", r[0]) for r in listed]
        if not job_id and listed:
            job_id = listed[0][0]
        if not job_id:
            return [listed, gr.Dropdown(choices=choices, value=None), "No jobs yet.", gr.Button(interactive=False),
                    gr.Button(interactive=False), "", *[gr.skip()] * len(extra_outputs)]
        job = db.job(run.store, job_id)
        progress = run.progress(job)
        return [listed, gr.Dropdown(choices=choices, value=job.id), status_line(job, progress),
                gr.Button(interactive=job.status in ("queued", "running")),
                gr.Button(interactive=resumable(job)),
                progress.get("log", ""), *extra(job, progress, shown)]

    def show(job_id: str | None, shown: str, request: gr.Request) -> list[Any]:
        try:
            return refresh(job_id, shown, request)
        except KrishnaError as exc:
            raise gr_error(exc) from None

    def stop(job_id: str | None, shown: str, request: gr.Request) -> list[Any]:
        try:
            runner(studio, request).stop(job_id or "")
        except KrishnaError as exc:
            raise gr_error(exc) from None
        return show(job_id, shown, request)

    def resume(job_id: str | None, shown: str, request: gr.Request) -> list[Any]:
        try:
            runner(studio, request).resume(job_id or "")
        except KrishnaError as exc:
            raise gr_error(exc) from None
        return show(job_id, shown, request)

    inputs = [view.chosen, drawn]
    view.timer.tick(show, inputs, outputs, queue=False, show_progress="hidden")
    view.chosen.input(show, inputs, outputs, queue=False)
    view.stop.click(stop, inputs, outputs, queue=False)
    view.resume.click(resume, inputs, outputs, queue=False)
    return show


def register_job_api(studio: Studio) -> None:
    """/jobs, /job, /job_start, /job_stop, /job_resume (call inside the Blocks context): admins only."""
    def jobs(kind: str = "", request: gr.Request = None) -> list[dict]:  # type: ignore[assignment]
        """Every job (or one kind's: train, eval, export), newest first."""
        run = runner(studio, request)
        return [job_payload(studio, j) for j in db.jobs(run.store, kind or None)]

    def job(job_id: str, request: gr.Request = None) -> dict:  # type: ignore[assignment]
        """One job with its progress (training: the logged steps) and the end of its log."""
        run = runner(studio, request)
        return job_payload(studio, db.job(run.store, job_id), progress=True)

    def job_start(kind: str, params: dict, request: gr.Request = None) -> dict:  # type: ignore[assignment]
        """Queue a job: kind train ({recipe, epochs, max_steps, rank, learning_rate, save_steps, limit}), eval
        ({persona, models: [one or two specs], limit}) or export ({base, adapter, persona, targets, outtype})."""
        run = runner(studio, request)
        return job_payload(studio, run.submit(user_of(request), kind, params))

    def job_stop(job_id: str, request: gr.Request = None) -> dict:  # type: ignore[assignment]
        """Stop a job (a training run saves a checkpoint first; resume it with /job_resume)."""
        return job_payload(studio, runner(studio, request).stop(job_id))

    def job_resume(job_id: str, request: gr.Request = None) -> dict:  # type: ignore[assignment]
        """Continue a stopped or interrupted training run from its last checkpoint."""
        return job_payload(studio, runner(studio, request).resume(job_id))

    for fn in (jobs, job, job_start, job_stop, job_resume):
        gr.api(_api_errors(fn), api_name=fn.__name__, queue=False)


def _api_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    import functools

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KrishnaError as exc:
            raise gr_error(exc) from None
    return call
