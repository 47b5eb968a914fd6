"""The Personas tab: edit a persona in a form (the common fields) with its TOML underneath, validated as you
type by the loader itself (core/drafts.py: the errors `python app.py` would give), tried in a side chat before
it is saved, saved to this install's own persona folder (never over a shipped file without saying so);
SillyTavern Character Card V2 files imported into the editor and exported from it.

    Client(url).predict(toml_text, api_name="/persona_check")            # {"ok": …, "id": …, "errors": …}
    Client(url).predict(toml_text, False, api_name="/persona_save")      # {"id": …, "file": …}

Saving changes what the server runs, so only `Studio.admins` may (with logins: the users named by --admin;
without: the one local user; a public app without logins: nobody). Everyone may read the tab.
"""

from __future__ import annotations

import tempfile
import tomllib
from pathlib import Path
from typing import Any

import gradio as gr

from krishna_ai.core.drafts import check_persona_text, persona_text, save_persona_text
from krishna_ai.core.errors import KrishnaError, PersonaError
from krishna_ai.core.sampling import SamplingParams
from krishna_ai.history.cards import card_to_persona, read_card, write_card
from krishna_ai.studio.saving import GENERATE, content_text, gr_error, quota_key, say, uploaded, user_of
from krishna_ai.studio.service import Studio, updates

FIELDS = ("id", "name", "description", "greeting", "system_prompt")
"""The form's text fields, as the TOML's top-level keys; examples and two sampling values come after them."""
NEW = "id = \"my-persona\"\nname = \"My persona\"\ndescription = \"What it is for, in one line.\"\n" \
      "greeting = \"Hello! Ask me anything about …\"\nsystem_prompt = \"\"\"\nYou are …\n\"\"\"\n"


def _form(text: str) -> list[Any]:
    """The form's values from TOML text (gr.skip() for all when it does not parse: the form keeps its values)."""
    try:
        raw = tomllib.loads(text or "")
    except tomllib.TOMLDecodeError:
        return [gr.skip()] * (len(FIELDS) + 3)
    sampling = raw.get("sampling") if isinstance(raw.get("sampling"), dict) else {}
    examples = raw.get("examples") if isinstance(raw.get("examples"), list) else []
    default = SamplingParams()  # what the persona gets when its file says nothing
    return [*(str(raw.get(f, "")) for f in FIELDS), "\n".join(map(str, examples)),
            sampling.get("temperature", default.temperature), sampling.get("max_new_tokens", default.max_new_tokens)]


def _toml(text: str, values: list[Any]) -> str:
    """The TOML with the form's values written into it (the other tables kept as they are)."""
    import tomli_w

    try:
        raw = tomllib.loads(text or "")
    except tomllib.TOMLDecodeError:
        raw = {}  # the form rebuilds a file the text editor had broken
    *texts, examples, temperature, max_new = values
    for key, value in zip(FIELDS, texts, strict=True):
        raw[key] = value or ""
    lines = [q.strip() for q in (examples or "").splitlines() if q.strip()]
    if lines:
        raw["examples"] = lines
    else:
        raw.pop("examples", None)
    sampling = dict(raw.get("sampling") or {})
    sampling.update(temperature=float(temperature), max_new_tokens=int(max_new))
    raw["sampling"] = sampling
    order = [*FIELDS, *(k for k in raw if k not in FIELDS)]  # the plain keys before the tables, as TOML wants
    return tomli_w.dumps({k: raw[k] for k in order if k in raw})


def card_draft(path: str | Path) -> tuple[str, list[str]]:
    """A character card file (.png or .json) as persona TOML for the editor, and what the card had that a
    persona cannot carry."""
    path = Path(path)
    imported = card_to_persona(read_card(path.read_bytes(), path.name))
    return imported.toml, imported.not_carried


def draft_card(text: str, folder: str | Path) -> Path:
    """The draft (checked first) as a character card PNG in `folder`."""
    draft = check_persona_text(text)
    return write_card(draft, Path(folder) / f"{draft.id}.card.png")


def _check(text: str) -> str:
    try:
        persona = check_persona_text(text)
    except PersonaError as exc:
        return f"❌ Not valid yet:\n\n```\n{exc}\n```"
    return f"✅ Valid: **{persona.name}** (`{persona.id}`)."


def build_persona_tab(studio: Studio, persona: str) -> tuple[Any, gr.Dropdown]:
    """The Personas tab's widgets and events (inside a `gr.Tab`); returns the save event (the app chains the
    refresh of its persona lists to it) and the tab's own persona list. Every event checks that
    the user is an admin: a draft names files on the server (banks, adapters), which the check reads."""
    where = studio.prompts_dir or "nowhere (saving is off)"
    gr.Markdown(f"Edit a persona: the form writes the TOML beside it, which is checked as you type with the "
                f"errors the app gives at start. Try it in the chat below, then save it to `{where}` "
                "(shipped files are never changed). Saving is for the app's admins.")
    with gr.Row():
        start = gr.Dropdown([("New persona", ""), *((p.name, p.id) for p in studio.personas.values())],
                            value=persona, label="Start from", elem_id="persona-start")
        card_in = gr.File(label="Import a character card (.png / .json)", file_types=[".png", ".json"],
                          elem_id="persona-card-in", height=120)
        card_out = gr.File(label="Export as a character card", interactive=False, elem_id="persona-card-out",
                           height=120)
    first = persona_text(studio.persona(persona))
    values = _form(first)
    with gr.Row():
        with gr.Column():
            fields = [gr.Textbox(value=values[i], label=f.replace("_", " ").capitalize(), elem_id=f"persona-{f}",
                                 lines=8 if f == "system_prompt" else 1, max_lines=20)
                      for i, f in enumerate(FIELDS)]
            examples = gr.Textbox(value=values[5], label="Example questions (one per line)", lines=3,
                                  elem_id="persona-examples")
            temperature = gr.Slider(0.0, 2.0, value=values[6], step=0.05, label="Temperature")
            max_new = gr.Slider(16, 1024, value=values[7], step=16, label="Max new tokens")
        with gr.Column():
            code = gr.Code(first, language=None, label="The persona file (TOML)", lines=30, elem_id="persona-toml")
    check = gr.Markdown(_check(first), elem_id="persona-check")

    def may(request: gr.Request) -> bool:
        return studio.may_admin(user_of(request))

    with gr.Row():
        replace = gr.Checkbox(False, label="Replace a persona of the same id (a shipped one: in this install only)",
                              elem_id="persona-replace")
        save = gr.Button("Save persona", variant="primary", elem_id="persona-save")
        export = gr.Button("Export card (.png)", elem_id="persona-export")
    saved_md = gr.Markdown(elem_id="persona-saved")
    gr.Markdown("**Try it** (the draft as it is now, on the app's model; nothing is saved)")
    try_chat = gr.Chatbot(height=260, label="Try the draft", elem_id="persona-try-chat")
    with gr.Row():
        try_box = gr.Textbox(show_label=False, placeholder="Ask the draft a question", scale=4,
                             elem_id="persona-try-input")
        try_btn = gr.Button("Send", scale=1, elem_id="persona-try-send")
    form = [*fields, examples, temperature, max_new]

    def on_start(persona_id: str):
        text = persona_text(studio.persona(persona_id)) if persona_id else NEW
        return text, *_form(text), []

    start.input(on_start, start, [code, *form, try_chat], queue=False)
    code.input(lambda text: _form(text), code, form, queue=False, trigger_mode="always_last")
    for widget in form:
        widget.input(lambda text, *values: _toml(text, list(values)), [code, *form], code, queue=False,
                     trigger_mode="always_last")
    def on_change(text: str, request: gr.Request) -> str:
        return _check(text) if may(request) else "Checking drafts is for this app's admins."

    code.change(on_change, code, check, queue=False, trigger_mode="always_last")

    def admin(request: gr.Request) -> str:
        user = user_of(request)
        if not studio.may_admin(user):
            raise gr.Error("Saving personas is for this app's admins (python app.py --admin USER).")
        return user

    def on_save(text: str, confirmed: bool, request: gr.Request):
        admin(request)
        if studio.prompts_dir is None:
            raise gr.Error("Saving personas is off on this server.")
        try:
            path, saved = save_persona_text(text, studio.prompts_dir or "", replace=confirmed)
        except KrishnaError as exc:
            raise gr_error(exc) from None
        studio.add_persona(saved)
        return f"💾 Saved **{saved.name}** to `{path}`; it is in the persona lists now."

    saved = save.click(on_save, [code, replace], saved_md, queue=False)

    def on_card(file: Any):
        if file is None:
            return gr.skip(), *[gr.skip()] * len(form)
        path = Path(uploaded(file if isinstance(file, str) else getattr(file, "path", None) or file["path"],
                             "the card") or "")
        try:
            text, lost = card_draft(path)
        except KrishnaError as exc:
            raise gr_error(exc) from None
        if lost:
            gr.Info("Not carried from the card: " + "; ".join(lost))
        return text, *_form(text)

    card_in.upload(on_card, card_in, [code, *form], queue=False)

    def on_export(text: str, request: gr.Request):
        admin(request)
        try:
            return draft_card(text, tempfile.mkdtemp(prefix="card-"))
        except KrishnaError as exc:
            raise gr_error(exc) from None

    export.click(on_export, code, card_out, queue=False)

    async def on_try(history: list[dict], question: str, text: str, request: gr.Request):
        admin(request)
        question = (question or "").strip()
        if not question:
            raise gr.Error("Type a question for the draft.")
        try:
            draft = check_persona_text(text)
        except KrishnaError as exc:
            raise gr_error(exc) from None
        earlier = [{"role": m["role"], "content": content_text(m["content"])} for m in history or []]
        history = [*(history or []), {"role": "user", "content": question},
                   {"role": "assistant", "content": ""}]
        yield history, ""
        try:
            async for update in updates(studio, draft.id, earlier, question, draft=draft, endpoint="persona",
                                         user=quota_key(request), session=f"{request.session_hash}:persona"):
                history[-1] = {"role": "assistant", "content": update.text}
                yield history, gr.skip()
        except KrishnaError as exc:
            history[-1] = {"role": "assistant", "content": f"⚠️ {say(exc)}"}
            yield history, gr.skip()

    for trigger in (try_btn.click, try_box.submit):
        trigger(on_try, [try_chat, try_box, code], [try_chat, try_box], concurrency_id=GENERATE,
                concurrency_limit=studio.concurrency, api_visibility="private")
    _register_api(studio, admin)
    return saved, start


def _register_api(studio: Studio, admin: Any) -> None:
    def persona_check(text: str, request: gr.Request = None) -> dict:  # type: ignore[assignment]
        """Check persona TOML as the loader would (admins only): {"ok", "id", "errors"} (every problem)."""
        admin(request)
        try:
            persona = check_persona_text(text or "")
        except PersonaError as exc:
            return {"ok": False, "id": None, "errors": str(exc)}
        return {"ok": True, "id": persona.id, "errors": ""}

    def persona_save(text: str, replace: bool = False, request: gr.Request = None) -> dict:  # type: ignore[assignment]
        """Save a persona (admins only) to this install's persona folder; `replace` to put it in the place of
        one with the same id (a shipped file is never changed)."""
        admin(request)
        if studio.prompts_dir is None:
            raise gr.Error("saving personas is off on this server")
        try:
            path, saved = save_persona_text(text or "", studio.prompts_dir or "", replace=bool(replace))
        except KrishnaError as exc:
            raise gr_error(exc) from None
        studio.add_persona(saved)
        return {"id": saved.id, "file": str(path)}

    gr.api(persona_check, api_name="persona_check", queue=False)
    gr.api(persona_save, api_name="persona_save", queue=False)
