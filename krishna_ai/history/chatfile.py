"""Chats in and out of the history: export as JSON or Markdown, import JSON (validated), and the operator's
export of feedback as training data.

    {"format": "krishna_ai.chat", "version": 1, "title": "…", "persona": "krishna",
     "messages": [{"role": "user", "content": "…"}, {"role": "assistant", "content": "…", "feedback": 1,
                   "meta": {"model": "light-gguf", …}}]}

An import is data from outside: every problem is reported at once (message index and field), roles
are only user/assistant (no forged system turn), Gemma's turn markers are refused (they would forge
turns when the chat is continued), sizes are capped, and the persona must exist here. Images are not
carried (the file says where one was).

Feedback export (`python -m krishna_ai feedback export OUT`) writes, per persona, each example opening with the
system part its reply was generated with (the persona's prompt and the cards the reply was grounded in):
  sft-<persona>.jsonl   liked replies with the conversation before them: the project's conversation format
  dpo-<persona>.jsonl   preference pairs in TRL's conversational DPO format {"prompt", "chosen", "rejected"}
                        (`train` with `method: dpo` reads them):
                        chosen = a liked reply, or the reply kept after a Retry when not disliked;
                        rejected = a disliked reply, or one the user replaced with Retry (unless liked);
                        and each side-by-side vote for A or B (the Compare tab): chosen = the winner.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from krishna_ai.core.cache import atomic_file
from krishna_ai.core.errors import InputError, problems
from krishna_ai.core.personas import Persona
from krishna_ai.core.prompting import Message, system_text
from krishna_ai.core.schema import Strict, read_json
from krishna_ai.history.schema import ChatInfo, StoredMessage
from krishna_ai.history.store import HistoryStore, clean_title
from krishna_ai.history.votes import Vote, votes

FORMAT = "krishna_ai.chat"
VERSION = 1
MAX_IMPORT_BYTES = 5 * 1024 * 1024
MAX_IMPORT_MESSAGES = 2000
MAX_CONTENT_CHARS = 32_000
_TURN_MARKER = re.compile(r"<(start_of_turn|end_of_turn|bos|eos|start_of_image|end_of_image)>", re.IGNORECASE)


class ChatFileMessage(Strict):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_CONTENT_CHARS)
    feedback: Literal[1, -1] | None = None
    superseded: bool = False
    meta: dict[str, Any] = Field(default_factory=dict)
    image: str | None = None
    """Where an image was in the original chat (informational: images are not carried)."""
    created_at: str | None = None

    @field_validator("content")
    @classmethod
    def _no_turn_markers(cls, value: str) -> str:
        if _TURN_MARKER.search(value):
            raise ValueError("contains a Gemma turn marker (e.g. <start_of_turn>), which would forge a turn")
        return value


class ChatFile(Strict):
    format: Literal["krishna_ai.chat"]
    version: Literal[1]
    title: str = Field(default="Imported chat", max_length=500)
    persona: str
    created_at: str | None = None
    messages: list[ChatFileMessage] = Field(min_length=1, max_length=MAX_IMPORT_MESSAGES)


# -- export -------------------------------------------------------------------------------------------------
def to_json(chat: ChatInfo) -> dict[str, Any]:
    return {
        "format": FORMAT, "version": VERSION, "title": chat.title, "persona": chat.persona,
        "created_at": chat.created_at.isoformat(),
        "messages": [_message_json(m) for m in chat.messages],
    }


def _message_json(m: StoredMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.feedback is not None:
        out["feedback"] = m.feedback
    if m.superseded:
        out["superseded"] = True
    if m.meta:
        out["meta"] = m.meta
    if m.image is not None:
        out["image"] = m.image.name
    if m.created_at is not None:
        out["created_at"] = m.created_at.isoformat()
    return out


def to_markdown(chat: ChatInfo, persona_name: str | None = None) -> str:
    """The chat as a reader sees it: visible messages only, with the model and sources of each reply."""
    lines = [f"# {chat.title}", "", f"*{persona_name or chat.persona} · {chat.created_at:%Y-%m-%d %H:%M} UTC*", ""]
    for m in chat.visible:
        who = "**You**" if m.role == "user" else f"**{persona_name or chat.persona}**"
        lines.append(f"{who}:")
        lines.append("")
        if m.image is not None:
            lines.append(f"*[image: {m.image.name}]*")
            lines.append("")
        lines.append(m.content.strip() or "*(empty)*")
        extra = []
        if isinstance(m.meta.get("model"), str):
            extra.append(f"model {m.meta['model']}")
        if m.feedback:
            extra.append("👍" if m.feedback > 0 else "👎")
        sources = [x for x in m.meta.get("sources") or [] if isinstance(x, dict)] \
            if isinstance(m.meta.get("sources"), list) else []
        if sources:
            extra.append("sources: " + "; ".join(f"{s.get('title')} — {s.get('source')}" for s in sources))
        if extra:
            lines += ["", f"<sub>{' · '.join(extra)}</sub>"]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# -- import -------------------------------------------------------------------------------------------------
def parse_chat_file(raw: bytes | str, where: str = "the file", personas: set[str] | None = None) -> ChatFile:
    """A validated chat file, or InputError listing every problem."""
    data = read_json(raw, where=where, what="a chat file", limit=MAX_IMPORT_BYTES, error=InputError)
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a JSON object (a krishna_ai chat export)")
    if data.get("format") != FORMAT:
        raise InputError(f"{where}: not a krishna_ai chat export (\"format\" must be {FORMAT!r}, "
                         f"got {data.get('format')!r})")
    items = []
    if personas is not None and isinstance(data.get("persona"), str) and data["persona"] not in personas:
        items.append(f"persona: unknown persona {data['persona']!r}; this app has: {', '.join(sorted(personas))}")
    try:
        chat = ChatFile.model_validate(data)
    except ValidationError as exc:
        items += [f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
    if items:
        raise InputError(problems(f"{where} is not a valid chat file:", items[:20]))
    return chat


def import_chat(store: HistoryStore, user: str, raw: bytes | str, where: str = "the file",
                personas: set[str] | None = None) -> ChatInfo:
    """Validate, then write the chat and all its messages (in one go: a bad file leaves nothing behind)."""
    chat = parse_chat_file(raw, where, personas)
    rows = []
    for m in chat.messages:
        meta = {**m.meta, "imported": True}  # feedback export leaves imported turns out (they could be anyone's)
        if m.image:
            meta["image_not_imported"] = m.image
        assistant = m.role == "assistant"
        rows.append({"role": m.role, "content": m.content, "meta": meta,
                     "feedback": m.feedback if assistant else None, "superseded": m.superseded and assistant})
    return store.new_chat(user, chat.persona, clean_title(chat.title) or "Imported chat", messages=rows)


# -- feedback as training data ------------------------------------------------------------------------------
def _turns(messages: list[StoredMessage]) -> list[tuple[list[Message], list[StoredMessage]]]:
    """(conversation up to and including a user message, every reply given to it) for each user turn."""
    out: list[tuple[list[Message], list[StoredMessage]]] = []
    context: list[Message] = []
    replies: list[StoredMessage] = []
    for m in messages:
        if m.role == "user":
            if replies:
                out.append((list(context), replies))
                kept = [r for r in replies if not r.superseded]
                if kept:
                    context.append({"role": "assistant", "content": kept[-1].content})
                replies = []
            if context and context[-1]["role"] == "user":  # two user messages in a row: one turn
                context[-1] = {"role": "user", "content": context[-1]["content"] + "\n" + m.content}
            else:
                context.append({"role": "user", "content": m.content})
        elif context:
            replies.append(m)
    if replies:
        out.append((list(context), replies))
    return out


def system_message(persona: Persona, reply: StoredMessage, question: str) -> Message:
    """The system part the reply was generated with: the persona's, with the cards its meta names (the
    prompt a fine-tune learns from is the prompt the app built)."""
    from krishna_ai.core.knowledge import load_bank
    from krishna_ai.core.records import record_cards

    ids = [s["id"] for s in reply.meta.get("sources") or [] if isinstance(s, dict) and s.get("id")]
    teachings = None
    if persona.counsel is not None:
        counsel = load_bank(persona.counsel.bank)
        shown = {c.id for c in counsel.cards}
        teachings = [counsel.card(i) for i in ids if i in shown]
        ids = [i for i in ids if i not in shown]
    record = {"question": question, "cards": ids, "personality": reply.meta.get("personality")}
    cards = record_cards(persona, record) if persona.knowledge is not None else None
    return {"role": "system", "content": system_text(persona, reply.meta.get("personality"), cards, teachings)}


def with_system(persona: Persona | None, context: list[Message], reply: StoredMessage) -> list[Message]:
    return context if persona is None else [system_message(persona, reply, context[-1]["content"]), *context]


def complete(reply: StoredMessage) -> bool:
    """A reply that ended by itself: one stopped or cut at the token limit is never a chosen answer."""
    stats = reply.meta.get("stats")
    finish = stats.get("finish_reason") if isinstance(stats, dict) else None
    if reply.meta.get("safety"):  # the fixed crisis reply: no model wrote it, no model should learn it
        return False
    return bool(reply.content.strip()) and finish not in ("stopped", "max_tokens", "run_on", "error")


def feedback_examples(chats: list[ChatInfo], personas: dict[str, Persona] | None = None,
                      include_imported: bool = False) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """(SFT conversations, DPO pairs), each keyed by persona. With `personas`, each example starts with the
    system part its reply was generated with (chats of a persona not in `personas` are left out). Turns
    imported from a file are left out unless `include_imported` (their thumbs were not given here)."""
    sft: dict[str, list[dict]] = defaultdict(list)
    dpo: dict[str, list[dict]] = defaultdict(list)
    for chat in chats:
        persona = personas.get(chat.persona) if personas is not None else None
        if personas is not None and persona is None:
            continue

        for context, replies in _turns(chat.messages):
            if not include_imported:
                replies = [r for r in replies if not r.meta.get("imported")]
            liked = [r for r in replies if r.feedback == 1 and complete(r)]
            for r in liked:
                sft[chat.persona].append({"messages": [*with_system(persona, context, r),
                                                       {"role": "assistant", "content": r.content}],
                                          "meta": {"chat": chat.id, "message": r.id}})
            chosen = liked or [r for r in replies if not r.superseded and r.feedback != -1
                               and len(replies) > 1 and complete(r)]
            rejected = [r for r in replies if (r.feedback == -1 or r.superseded) and r.feedback != 1
                        and r.content.strip()]
            for c in chosen:
                for r in rejected:
                    if c.id != r.id and c.content != r.content:
                        dpo[chat.persona].append({"prompt": with_system(persona, context, c),
                                                  "chosen": [{"role": "assistant", "content": c.content}],
                                                  "rejected": [{"role": "assistant", "content": r.content}]})
    return dict(sft), dict(dpo)


def vote_pairs(compared: list[Vote], personas: dict[str, Persona] | None = None) -> dict[str, list[dict]]:
    """{persona: DPO pairs} from side-by-side votes (history/votes.py): each vote for A or B whose winner ended
    by itself and differs from the loser. With `personas`, the prompt opens with the system part the winner
    was generated with (a persona not in `personas` is left out), as for chat feedback."""
    out: dict[str, list[dict]] = {}
    for v in compared:
        if v.winner not in ("a", "b"):
            continue
        persona = personas.get(v.persona) if personas is not None else None
        if personas is not None and persona is None:
            continue
        won, lost = (v.a, v.b) if v.winner == "a" else (v.b, v.a)
        chosen = StoredMessage(0, 0, "assistant", won.reply, meta=won.meta)
        if not complete(chosen) or not lost.reply.strip() or won.reply == lost.reply:
            continue
        context = [*v.context, {"role": "user", "content": v.question}]
        out.setdefault(v.persona, []).append({"prompt": with_system(persona, context, chosen),
                                              "chosen": [{"role": "assistant", "content": won.reply}],
                                              "rejected": [{"role": "assistant", "content": lost.reply}]})
    return out


def export_feedback(store: HistoryStore, out: str | Path, user: str | None = None,
                    personas: dict[str, Persona] | None = None, include_imported: bool = False
                    ) -> dict[str, dict[str, int]]:
    """Write sft-<persona>.jsonl and dpo-<persona>.jsonl into `out`; {persona: counts}. An existing folder is
    kept: each file is written whole or not at all, and only the files of this export are replaced."""
    chats = [c for _, c in store.all_chats(user)]
    sft, dpo = feedback_examples(chats, personas, include_imported)
    for persona, pairs in vote_pairs(votes(store, user=user), personas).items():  # the Compare tab's votes
        dpo[persona] = [*dpo.get(persona, []), *pairs]
    counts: dict[str, dict[str, int]] = {}
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; feedback export writes into a folder")
    for kind, rows_by in (("sft", sft), ("dpo", dpo)):
        for persona, rows in sorted(rows_by.items()):
            with atomic_file(out / f"{kind}-{persona}.jsonl") as tmp, tmp.open("w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            counts.setdefault(persona, {"sft": 0, "dpo": 0})[kind] = len(rows)
    return counts
