"""The Gradio Blocks UI. It only wires widgets to a `Studio`; no model is loaded at import or build.

API for programs (documented in the README):
    Client(url).submit("question", "krishna", api_name="/chat")              # streams the growing reply
    Client(url).submit("what is this?", "maize", handle_file("leaf.jpg"), api_name="/chat")
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import gradio as gr

from krishna_ai.core.errors import KrishnaError
from krishna_ai.matformer import known_configs
from krishna_ai.runtime.tiers import FAST_PATH_HINT, TIERS, default_tier
from krishna_ai.studio.api import register_api, updates
from krishna_ai.studio.compare import build_compare_tab
from krishna_ai.studio.eval_tab import build_eval_tab, model_boxes
from krishna_ai.studio.export_tab import build_export_tab
from krishna_ai.studio.grade import build_grade_tab
from krishna_ai.studio.job_view import register_job_api
from krishna_ai.studio.persona_editor import build_persona_tab
from krishna_ai.studio.replies import sources_line, verdict_line
from krishna_ai.studio.saving import (
    GENERATE,
    PartialReply,
    choices,
    content_files,
    content_text,
    gr_error,
    message_id,
    pending_start,
    quota_key,
    retried_replies,
    save_question,
    save_reply,
    saved_context,
    say,
    tag,
    timed,
    unsave_question,
    user_of,
)
from krishna_ai.studio.service import MAX_PERSONALITY_CHARS, Studio
from krishna_ai.studio.sidebar import build_sidebar, wire_sidebar
from krishna_ai.studio.train_tab import build_train_tab

NOTICE = "⚠️ Not answered"
"""Title of the chat notice shown when a request is refused (kept out of the model's history)."""


def split_pending(history: list[dict]) -> tuple[list[dict], str, str | None]:
    """(earlier turns, the trailing user text, the trailing user image) of a Chatbot history."""
    i = pending_start(history)
    pending = history[i:]
    text = "\n".join(t for t in (content_text(m["content"]) for m in pending) if t).strip()
    images = [f for m in pending for f in content_files(m["content"])]
    earlier: list[dict] = []
    for m in history[:i]:
        if (m.get("metadata") or {}).get("title") == NOTICE:  # an unanswered turn: drop it and its question
            while earlier and earlier[-1]["role"] == "user":
                earlier.pop()
            continue
        earlier.append({"role": m["role"], "content": content_text(m["content"])})
    return earlier, text, images[-1] if images else None


def _greeting(studio: Studio, persona_id: str) -> list[dict]:
    return [{"role": "assistant", "content": studio.persona(persona_id).greeting}]


def build_demo(studio: Studio, *, persona: str = "krishna") -> gr.Blocks:
    """Build the Blocks app around `studio`. Loads nothing; the first request loads the model."""
    personas = studio.personas
    if persona not in personas:
        persona = next(iter(personas))
    model_choices = [(t.label, t.id) for t in TIERS.values()]
    default_model = studio.default_model
    extra = [default_model, *(studio.policy.allowed if studio.policy else [])]
    model_choices += [(f"Custom · {m}", m) for m in dict.fromkeys(extra) if m not in TIERS and m not in studio.trained]

    def with_trained() -> list[tuple[str, str]]:
        """The model box's choices with the adapters trained in the app so far."""
        return model_choices + [(label, spec) for spec, label in studio.trained.items()]
    open_models = studio.policy is None or studio.policy.open_to_any

    store = studio.store
    with gr.Blocks(title="krishna_ai studio") as demo:
        chat_id = gr.State(None)  # the saved chat on screen (None: not saved yet; one is made on the first message)
        sidebar = build_sidebar(studio)
        gr.Markdown("# krishna_ai studio\nChat with persona-specialised Gemma models.")
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Chat", id="chat", elem_id="tab-chat") as chat_tab:
                with gr.Row():
                    persona_dd = gr.Dropdown([(p.name, p.id) for p in personas.values()], value=persona,
                                             label="Persona", scale=2)
                    model_dd = gr.Dropdown(with_trained(), value=default_model, label="Model tier",
                                           allow_custom_value=open_models, scale=2,
                                           info="light runs offline on CPU (light-gguf: the same model on "
                                                "llama.cpp, several times faster); e2b/e4b need Gemma 3n weights"
                                                + ("; or type a local folder / hub id / .gguf file"
                                                   if open_models else ""))
                description = gr.Markdown(personas[persona].description)
                if studio.default_model == "light" and default_tier() == "light":  # llama.cpp not installed
                    gr.Markdown(f"ℹ️ {FAST_PATH_HINT}", elem_id="fast-path-hint")
                chatbot = gr.Chatbot(value=_greeting(studio, persona), label="Chat", height=480, buttons=["copy"],
                                     feedback_options=("Like", "Dislike") if store is not None else None)
                textbox = gr.MultimodalTextbox(placeholder="Ask a question (attach a maize-leaf photo on a Gemma 3n "
                                                           "tier)",
                                               file_types=["image"], file_count="single", show_label=False,
                                               sources=["upload"], elem_id="chat-input")
                personality = gr.Textbox(label="Story about (optional)", max_length=MAX_PERSONALITY_CHARS,
                                         visible=bool(personas[persona].personalities),
                                         placeholder="a famous person; empty = the story that fits your question best")
                with gr.Row():
                    stop_btn = gr.Button("Stop", variant="stop", scale=1, interactive=False, elem_id="stop-button")
                    retry_btn = gr.Button("Retry", scale=1)
                    undo_btn = gr.Button("Undo", scale=1)
                    clear_btn = gr.Button("Clear", scale=1)
                stats_md = gr.Markdown("", elem_id="reply-stats")
                badge_md = gr.Markdown("", elem_id="style-badge")
                sources_md = gr.Markdown("", elem_id="reply-sources")
                examples = gr.Dataset(components=[gr.Textbox(visible=False)], label="Example questions",
                                      samples=[[q] for q in personas[persona].examples])
                with gr.Accordion("Settings", open=False):
                    p = personas[persona].sampling
                    temperature = gr.Slider(0.0, 2.0, value=p.temperature, step=0.05, label="Temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1.0, value=p.top_p, step=0.01, label="top_p")
                    top_k = gr.Slider(0, 200, value=p.top_k, step=1, label="top_k (0 = off)")
                    max_new = gr.Slider(16, 1024, value=p.max_new_tokens, step=16, label="Max new tokens")
                    slice_dd = gr.Dropdown([("Full model", "full"), *[(n, n) for n in known_configs()]], value="full",
                                           label="MatFormer size (E4B-shaped Gemma 3n only)",
                                           info="runs the loaded E4B as a smaller slice, live, without reloading")
            with gr.Tab("Compare", id="compare", elem_id="tab-compare") as compare_tab:
                compare_persona = build_compare_tab(studio, model_choices, persona)
            with gr.Tab("Grade", id="grade", elem_id="tab-grade") as grade_tab:
                grade_persona = build_grade_tab(studio, persona, grade_tab)
            with gr.Tab("Personas", id="personas", elem_id="tab-personas") as personas_tab:
                saved_persona, editor_persona = build_persona_tab(studio, persona)
            with gr.Tab("Train", id="train", elem_id="tab-train") as train_tab:
                train_timer = build_train_tab(studio, [model_dd], with_trained)
            with gr.Tab("Evaluate", id="evaluate", elem_id="tab-evaluate") as eval_tab:
                eval_timer, eval_models = build_eval_tab(studio, with_trained(), persona)
            with gr.Tab("Export", id="export", elem_id="tab-export") as export_tab:
                export_timer, export_source, export_choices = build_export_tab(studio, persona)
        admin_tabs, timers = [personas_tab, train_tab, eval_tab, export_tab], [train_timer, eval_timer, export_timer]
        sampling_inputs = [temperature, top_p, top_k, max_new]

        def on_persona(persona_id: str):
            """A persona switch starts a new chat (a saved chat keeps the persona it was held with)."""
            pr = studio.persona(persona_id)
            s = pr.sampling
            return (_greeting(studio, persona_id), pr.description, gr.Dataset(samples=[[q] for q in pr.examples]),
                    s.temperature, s.top_p, s.top_k, s.max_new_tokens, "", "", "",
                    gr.Textbox(value="", visible=bool(pr.personalities)), None, "")

        persona_outputs = [chatbot, description, examples, *sampling_inputs, stats_md, badge_md, sources_md,
                           personality, chat_id, sidebar.title]
        # .input, not .change: opening a saved chat sets the persona too, and must not reset the chat.
        persona_dd.input(on_persona, persona_dd, persona_outputs, queue=False)

        def on_model(spec: str, progress=gr.Progress()):
            spec = (spec or "").strip()
            if not spec:
                raise gr.Error("Type a tier id, a local model folder or a hub id.")
            progress(0, desc=f"Loading {spec}…")
            try:
                engine = studio.client_engine(spec)
            except KrishnaError as exc:
                raise gr_error(exc) from None
            vision = "reads images" if engine.info.multimodal else "text only"
            return f"Model **{engine.name}** ready ({vision})."

        model_dd.input(on_model, model_dd, stats_md, concurrency_id=GENERATE)

        def on_example(sample: list[str]):
            return {"text": sample[0], "files": []}

        examples.click(on_example, examples, textbox, queue=False)

        busy = [retry_btn, undo_btn, clear_btn, persona_dd, sidebar.new, sidebar.chats, sidebar.delete,
                sidebar.import_btn]
        locked = [gr.update(interactive=False)] * len(busy)

        def add_user(history: list[dict], value: dict | None):
            value = value or {}
            text = (value.get("text") or "").strip()
            files = value.get("files") or []
            if not text and not files:
                raise gr.Error("The message is empty: type a question (or attach an image).")
            history = list(history or [])
            for f in files[-1:]:
                path = f if isinstance(f, str) else f.get("path")
                history.append({"role": "user", "content": {"path": path}})
            if text:
                history.append({"role": "user", "content": text})
            return history, gr.MultimodalTextbox(value=None, interactive=False), gr.Button(interactive=True), *locked

        async def respond(history: list[dict], persona_id: str, model: str, t: float, tp: float, tk: int, mn: int,
                          who: str, size: str, cid: str | None, request: gr.Request) -> AsyncIterator[tuple]:
            earlier, text, image = split_pending(history)
            if not text and image is None:
                return
            session = request.session_hash or ""
            user = user_of(request)
            listed: Any = gr.skip()
            title: Any = gr.skip()
            saved_question, rejected = False, []
            if store is not None:
                try:  # the question is saved before the model runs: a crash loses at most the reply
                    new = not cid
                    before = history
                    # The database is written off the event loop: other clients never wait for this disk.
                    with timed(studio, "question"):
                        cid, history = await anyio.to_thread.run_sync(save_question, store, user, cid, persona_id,
                                                                      history)
                    saved_question = [message_id(m) for m in history] != [message_id(m) for m in before]
                    # The model's context is the saved chat, not what the browser sent: what is exported for
                    # training (a liked reply, a DPO pair) is exactly what the model saw.
                    chat = await anyio.to_thread.run_sync(store.chat, user, cid)
                    earlier, rejected = saved_context(chat, history), retried_replies(chat)
                    if new:
                        listed = gr.Radio(choices=await anyio.to_thread.run_sync(choices, store, user), value=cid)
                        title = chat.title
                except KrishnaError as exc:  # the store is down, the chat was deleted elsewhere, a huge image
                    gr.Warning(f"This message was not saved: {say(exc)}")
            sampling = {"temperature": t, "top_p": tp, "top_k": int(tk), "max_new_tokens": int(mn)}
            history = list(history) + [{"role": "assistant", "content": ""}]
            yield history, "⏳ waiting for the model…", "", "", cid, listed, title
            started = False
            with PartialReply(lambda u, finish: save_reply(studio, user, cid, u, model, persona_id, size, sampling,
                                                           finish=finish)) as partial:
                try:
                    async for update in updates(studio, persona_id, earlier, text, session=session,
                                                 user=quota_key(request), endpoint="ui", image=image,
                                                 model=model, personality=who or None, rejected=rejected,
                                                 slice=None if size == "full" else size, **sampling):
                        partial.seen(update)
                        history[-1] = {"role": "assistant", "content": update.text}
                        if update.done:
                            partial.finished()
                            saved = await anyio.to_thread.run_sync(save_reply, studio, user, cid, update, model,
                                                                   persona_id, size, sampling)
                            if saved is not None:
                                history[-1] = tag(history[-1], saved)
                            yield (history, update.stats.line(), verdict_line(update), sources_line(update), cid,
                                   gr.skip(), gr.skip())
                        elif not started:
                            started = True
                            yield (history, "⏳ generating…", "", sources_line(update), gr.skip(), gr.skip(),
                                   gr.skip())
                        else:
                            # Later chunks leave the stats line alone: a chunk still in flight when Stop is
                            # pressed must not overwrite Stop's "stopped" with "generating…".
                            yield history, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
                except KrishnaError as exc:
                    partial.failed()
                    # Keep the conversation on screen: the problem becomes a notice in the chat and a toast.
                    gr.Warning(say(exc))
                    history[-1] = {"role": "assistant", "content": say(exc), "metadata": {"title": NOTICE}}
                    if partial.last is None and store is not None and cid and saved_question:  # refused: unsave
                        cid, history, listed = await anyio.to_thread.run_sync(unsave_question, store, user, cid,
                                                                              history[:-1])
                        history.append({"role": "assistant", "content": say(exc), "metadata": {"title": NOTICE}})
                        yield history, "", "", "", cid, listed, "" if cid is None else gr.skip()
                    else:
                        yield history, "", "", "", cid, gr.skip(), gr.skip()

        respond_inputs = [chatbot, persona_dd, model_dd, *sampling_inputs, personality, slice_dd, chat_id]
        respond_outputs = [chatbot, stats_md, badge_md, sources_md, chat_id, sidebar.chats, sidebar.title]
        # Stop is live only while a reply streams; the textbox, and everything that would change the chat under
        # the reply (Retry, Undo, Clear, the persona, the chats sidebar), are locked meanwhile.
        unlock = dict(fn=lambda: (gr.MultimodalTextbox(interactive=True), gr.Button(interactive=False),
                                  *[gr.update(interactive=True)] * len(busy)),
                      outputs=[textbox, stop_btn, *busy], queue=False)

        submit_event = (textbox.submit(add_user, [chatbot, textbox], [chatbot, textbox, stop_btn, *busy])
                        .then(respond, respond_inputs, respond_outputs, concurrency_id=GENERATE,
                              concurrency_limit=studio.concurrency, api_visibility="private"))
        submit_event.then(**unlock)

        def drop_reply(history: list[dict]):
            history = list(history or [])
            while history and history[-1]["role"] == "assistant":
                history.pop()
            return history

        def retry(history: list[dict], cid: str | None, request: gr.Request):
            history = drop_reply(history)
            asked = [i for i in (message_id(m) for m in history[pending_start(history):]) if i]
            if store is not None and cid and asked:
                try:  # the replies to this question are hidden, and kept as rejected answers
                    store.retry(user_of(request), cid, asked[-1])
                except KrishnaError as exc:
                    gr.Warning(f"The retried reply stays in the saved chat: {say(exc)}")
            return history, gr.Button(interactive=True), *locked

        retry_event = (retry_btn.click(retry, [chatbot, chat_id], [chatbot, stop_btn, *busy])
                       .then(respond, respond_inputs, respond_outputs, concurrency_id=GENERATE,
                             api_visibility="private"))
        retry_event.then(**unlock)

        def undo(history: list[dict], persona_id: str, cid: str | None, request: gr.Request):
            history = drop_reply(history)
            earlier, text, _ = split_pending(history)
            keep = pending_start(history)
            asked = [i for i in (message_id(m) for m in history[keep:]) if i]
            if store is not None and cid and asked:
                try:  # this question's turn, by its id: never a turn another tab added since
                    store.undo(user_of(request), cid, asked[-1])
                except KrishnaError as exc:
                    gr.Warning(f"The saved chat still has this turn: {say(exc)}")
            if keep == 0 and not earlier:
                return history[:keep] or _greeting(studio, persona_id), {"text": text, "files": []}
            return history[:keep], {"text": text, "files": []}

        undo_btn.click(undo, [chatbot, persona_dd, chat_id], [chatbot, textbox])

        def new_chat(persona_id: str):
            """Clear and New chat: an empty chat on screen; the one before stays saved in the list."""
            return _greeting(studio, persona_id), "", "", "", None, "", gr.Radio(value=None)

        new_chat_outputs = [chatbot, stats_md, badge_md, sources_md, chat_id, sidebar.title, sidebar.chats]
        clear_btn.click(new_chat, persona_dd, new_chat_outputs, queue=False)
        sidebar.new.click(new_chat, persona_dd, new_chat_outputs, queue=False)

        def stop(request: gr.Request):
            # Flip the stop flag (generate ends at once and its thread is joined), and cancel the event,
            # which also drops a request still waiting in the queue. The partial reply stays on screen.
            studio.stop(request.session_hash or "")
            return "⏹ stopped"

        stop_btn.click(stop, None, stats_md, queue=False, cancels=[submit_event, retry_event]).then(**unlock)

        wire_sidebar(studio, demo, sidebar, chatbot=chatbot, chat_id=chat_id, persona_dd=persona_dd,
                     persona_outputs=persona_outputs, on_persona=on_persona, new_chat=new_chat,
                     new_chat_outputs=new_chat_outputs)
        register_api(studio)
        register_job_api(studio)
        lists = [persona_dd, compare_persona, grade_persona, editor_persona]

        def persona_lists() -> list[Any]:
            """Every persona list as the studio has it now (a persona saved in the Personas tab included)."""
            found = [(p.name, p.id) for p in studio.personas.values()]
            return [gr.Dropdown(choices=found), gr.Dropdown(choices=found), gr.Dropdown(choices=found),
                    gr.Dropdown(choices=[("New persona", ""), *found])]

        saved_persona.success(persona_lists, None, lists, queue=False)

        built = list(studio.personas)

        def on_load(request: gr.Request):
            # The Personas, Train, Evaluate and Export tabs are for admins only (their events check again: a hidden
            # tab is not a lock), and so are the job views' timers. The lists change only when a persona was saved
            # or a model trained since the page was built: a load never races the user.
            admin = studio.may_admin(user_of(request))
            tabs = [gr.skip() if admin else gr.Tab(visible=False) for _ in admin_tabs]
            lists_now = persona_lists() if list(studio.personas) != built else [gr.skip()] * len(lists)
            models = [gr.Dropdown(choices=with_trained()), *model_boxes(with_trained()),
                      gr.Dropdown(choices=export_choices())] if studio.trained else [gr.skip()] * 4
            return *tabs, *lists_now, *models

        demo.load(on_load, None, [*admin_tabs, *lists, model_dd, *eval_models, export_source], queue=False)

        def ticking(shown: int | None):
            """Only the job tab on screen refreshes itself (each second), and only for an admin."""
            def on_select(request: gr.Request):
                may = studio.may_admin(user_of(request)) and studio.jobs is not None
                return [gr.Timer(active=may and n == shown) for n in range(len(timers))]
            return on_select

        for tab, shown in ((chat_tab, None), (compare_tab, None), (grade_tab, None), (personas_tab, None),
                           (train_tab, 0), (eval_tab, 1), (export_tab, 2)):
            tab.select(ticking(shown), None, timers, queue=False)

    return demo
