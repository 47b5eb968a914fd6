"""The Train tab: a training run from a recipe (configs/*.yaml) with the form's overrides, queued as a job
(studio/jobs.py runs one at a time in its own process); its progress and loss plot live, Stop (a checkpoint
is saved) and Resume, its log. A finished run's adapter is offered in every model box at once.

The run is `python -m krishna_ai train --config <job>/recipe.yaml`, the recipe written with the form's values
(studio/workbench.py), so the README's commands repeat it; the job's log shows the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from krishna_ai.core.errors import KrishnaError
from krishna_ai.history.jobs import Job
from krishna_ai.studio import workbench
from krishna_ai.studio.job_view import build_job_view, runner, wire_job_view
from krishna_ai.studio.saving import gr_error, user_of
from krishna_ai.studio.service import Studio

FIELDS = ("epochs", "max_steps", "rank", "learning_rate", "save_steps", "limit")


def recipe_label(name: str, raw: dict[str, Any]) -> str:
    method = str(raw.get("method", "sft")).upper()
    return f"{Path(name).stem} · {method} · {raw.get('persona') or 'no persona'} on {raw.get('model', 'light')}"


def recipe_values(name: str) -> list[Any]:
    """The form's values from a recipe (what the run would use if nothing is changed)."""
    raw = dict(workbench.recipes()).get(name) or {}
    lora = raw.get("lora") or {}
    return [raw.get("epochs", 1.0), max(0, int(raw.get("max_steps", 0) or 0)), lora.get("r", 16),
            raw.get("learning_rate", 2e-4), raw.get("save_steps", 50), raw.get("limit") or 0]


def describe(name: str) -> str:
    raw = dict(workbench.recipes()).get(name) or {}
    if not raw:
        return ""
    lines = [f"`python -m krishna_ai train --config configs/{name}`",
             f"model **{raw.get('model', 'light')}** · persona **{raw.get('persona') or '–'}** · data "
             f"`{raw.get('data', '')}` · batch {raw.get('batch_size', 2)} × accumulation {raw.get('grad_accum', 4)}"]
    if raw.get("method") == "dpo":
        lines.append("DPO: trains on the preference pairs of this app's own votes and feedback "
                     "(`feedback export`, run first), refining the persona's adapter.")
    return "\n\n".join(lines)


def loss_frame(progress: dict[str, Any]) -> Any:
    import pandas as pd

    steps = progress.get("steps") or []
    return pd.DataFrame({"step": [r["step"] for r in steps], "loss": [r["loss"] for r in steps]})


def build_train_tab(studio: Studio, model_boxes: list[gr.Dropdown], model_choices: Any) -> gr.Timer:
    """The tab's widgets and events (inside the Tab); returns its timer, which the page turns on for admins.
    `model_choices()` gives the model boxes' choices (a finished run's adapter among them)."""
    found = workbench.recipes()
    first = next((n for n, _ in found if n == "krishna-light.yaml"), found[0][0] if found else None)
    gr.Markdown("Train a LoRA adapter from a recipe. One job runs at a time (the rest wait in the queue), in "
                "its own process below the app, so chatting goes on (slower) meanwhile.")
    with gr.Row():
        recipe = gr.Dropdown([(recipe_label(n, raw), n) for n, raw in found], value=first, label="Recipe",
                             scale=3, elem_id="train-recipe")
        start = gr.Button("Start training", variant="primary", scale=1, elem_id="train-start")
    about = gr.Markdown(describe(first) if first else "No recipes in configs/.")
    values = recipe_values(first) if first else [1.0, 0, 16, 2e-4, 50, 0]
    with gr.Row():
        epochs = gr.Number(values[0], label="Epochs", minimum=0.01, elem_id="train-epochs")
        max_steps = gr.Number(values[1], label="Steps (0: by epochs)", precision=0, minimum=0,
                              elem_id="train-steps")
        rank = gr.Number(values[2], label="LoRA rank", precision=0, minimum=1, elem_id="train-rank")
        lr = gr.Number(values[3], label="Learning rate", elem_id="train-lr")
        save_steps = gr.Number(values[4], label="Checkpoint every N steps", precision=0, minimum=1,
                               elem_id="train-save-steps")
        limit = gr.Number(values[5], label="Examples (0: all)", precision=0, minimum=0, elem_id="train-limit")
    view = build_job_view(studio, "train")
    plot = gr.LinePlot(loss_frame({}), x="step", y="loss", title="Training loss (per optimizer step)",
                       elem_id="train-loss-plot", height=260)
    shown = gr.State("")  # the job and number of steps the plot shows: it is redrawn only when a step was logged
    form = [epochs, max_steps, rank, lr, save_steps, limit]

    recipe.input(lambda name: [describe(name), *recipe_values(name)], recipe, [about, *form], queue=False)

    offered = gr.State(len(studio.trained))

    def extra(job: Job, progress: dict[str, Any], drawn: Any) -> list[Any]:
        key = f"{job.id}:{len(progress.get('steps') or [])}"
        return [gr.skip(), drawn] if key == drawn else [loss_frame(progress), key]

    refresh = wire_job_view(studio, view, extra, [plot, shown], shown)

    def tick_models(count: int) -> list[Any]:
        """The model boxes, when a run finished since they were filled."""
        if count == len(studio.trained):
            return [gr.skip()] * len(model_boxes) + [count]
        return [gr.Dropdown(choices=model_choices()) for _ in model_boxes] + [len(studio.trained)]

    view.timer.tick(tick_models, offered, [*model_boxes, offered], queue=False, show_progress="hidden")

    def submit(name: str, n_epochs: Any, steps: Any, r: Any, rate: Any, every: Any, examples: Any,
               request: gr.Request) -> list[Any]:
        numbers = (n_epochs, steps, r, rate, every, examples)
        try:
            job = runner(studio, request).submit(user_of(request), "train",
                                                 {"recipe": name, **dict(zip(FIELDS, numbers, strict=True))})
            gr.Info(f"Job {job.id} queued: {job.title}")
            return refresh(job.id, "", request)
        except KrishnaError as exc:
            raise gr_error(exc) from None

    start.click(submit, [recipe, *form], [view.table, view.chosen, view.status, view.stop, view.resume, view.log,
                                          plot, shown], queue=False)
    return view.timer


def on_done(studio: Studio) -> Any:
    """The runner's hook: a finished training run's adapter joins the model boxes (as `MODEL@ADAPTER`)."""
    def hook(job: Job) -> None:
        adapter = job.result.get("adapter")
        if job.kind == "train" and adapter and Path(adapter).is_dir():
            studio.add_trained(str(job.params.get("model") or "light"), adapter, f"Trained · {job.title} ({job.id})")
    return hook
