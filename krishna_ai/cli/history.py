"""`python -m krishna_ai chats …`, `feedback export` and `persona import|export`: what users make (saved chats,
their feedback, character cards) from a terminal.

    python -m krishna_ai chats list [--user U] [--search TEXT]
    python -m krishna_ai chats export CHAT_ID [--user U] [--format json|md] [-o FILE]
    python -m krishna_ai chats import FILE [--user U]
    python -m krishna_ai chats check                   # the database's integrity check
    python -m krishna_ai feedback export OUT_DIR [--user U]
    python -m krishna_ai persona import CARD.png|CARD.json [--id ID] [--out DIR]
    python -m krishna_ai persona export ID -o CARD.png|CARD.json [--image PORTRAIT]

The database is --db URL, else $KRISHNA_AI_DB, else the app's SQLite file. --user is a login name
(default "local", the one user of an app started without --auth).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from krishna_ai.core.cache import write_text
from krishna_ai.core.errors import InputError
from krishna_ai.history.schema import LOCAL_USER
from krishna_ai.history.store import HistoryStore, open_store


def add_parsers(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=None, metavar="URL", help="the history database (default: the app's)")
    prompts = argparse.ArgumentParser(add_help=False)
    prompts.add_argument("--prompts", action="append", default=[], metavar="DIR",
                         help="extra persona folder (repeatable)")

    p = sub.add_parser("chats", help="saved chats: list, export, import, check")
    verbs = p.add_subparsers(dest="chats_command", required=True, metavar="VERB")
    v = verbs.add_parser("list", parents=[common], help="the user's chats, latest first")
    v.add_argument("--user", default=LOCAL_USER, help=f"whose chats (default: {LOCAL_USER!r})")
    v.add_argument("--search", default="", help="only chats whose title or messages contain this text")
    v.add_argument("--json", action="store_true", help="one JSON object per chat")
    v.set_defaults(func=_list)
    v = verbs.add_parser("export", parents=[common, prompts], help="one chat as JSON (the import format) or Markdown")
    v.add_argument("chat_id", help="a chat id (see `chats list`), or latest")
    v.add_argument("--user", default=LOCAL_USER, help=f"whose chat (default: {LOCAL_USER!r})")
    v.add_argument("--format", choices=["json", "md"], default="json")
    v.add_argument("-o", "--output", default=None, help="file to write (default: standard output)")
    v.set_defaults(func=_export)
    v = verbs.add_parser("import", parents=[common, prompts], help="add a chat exported as JSON to the user's history")
    v.add_argument("file")
    v.add_argument("--user", default=LOCAL_USER, help=f"into whose history (default: {LOCAL_USER!r})")
    v.set_defaults(func=_import)
    v = verbs.add_parser("check", parents=[common], help="run the database's integrity check")
    v.set_defaults(func=_check)

    p = sub.add_parser("feedback", help="liked/disliked replies as training data")
    verbs = p.add_subparsers(dest="feedback_command", required=True, metavar="VERB")
    v = verbs.add_parser("export", parents=[common, prompts],
                         help="write sft-<persona>.jsonl (liked replies) and dpo-<persona>.jsonl (preference pairs)")
    v.add_argument("out", help="output folder (replaced whole)")
    v.add_argument("--user", default=None, help="only this user's chats (default: everyone's)")
    v.add_argument("--include-imported", action="store_true",
                   help="also chats imported from files (left out by default: their thumbs were not given here)")
    v.set_defaults(func=_feedback)


    p = sub.add_parser("persona", help="character cards: import a SillyTavern V2 card as a persona, export one")
    verbs = p.add_subparsers(dest="persona_command", required=True, metavar="VERB")
    v = verbs.add_parser("import", parents=[prompts], help="a persona file from a Character Card V2 (.json/.png)")
    v.add_argument("card")
    v.add_argument("--id", default=None, help="the persona id (default: from the card's name)")
    v.add_argument("--out", default=None, help="folder to write <id>.toml into (default: the shipped prompts/)")
    v.add_argument("--force", action="store_true", help="replace a persona with the same id")
    v.set_defaults(func=_card_import)
    v = verbs.add_parser("export", parents=[prompts], help="a persona as a Character Card V2 (.json, or a .png)")
    v.add_argument("persona")
    v.add_argument("-o", "--output", required=True, help="the card file: .json or .png")
    v.add_argument("--image", default=None, help="portrait for a .png card (default: a plain one)")
    v.set_defaults(func=_card_export)


def _card_import(args: argparse.Namespace) -> int:
    from krishna_ai.core.personas import PROMPTS_DIR, load_personas, persona_dirs
    from krishna_ai.history.cards import import_card

    out = Path(args.out) if args.out else PROMPTS_DIR
    target, imported = import_card(args.card, out, args.id, existing=set(load_personas(persona_dirs(args.prompts))),
                                   force=args.force)
    print(f"wrote {target} (persona {imported.persona.id!r}: {imported.persona.name})")
    for item in imported.not_carried:
        print(f"  not carried: {item}", file=sys.stderr)
    if args.out:
        print(f"use it with --prompts {args.out}", file=sys.stderr)
    return 0


def _card_export(args: argparse.Namespace) -> int:
    from krishna_ai.core.personas import get_persona, load_personas, persona_dirs
    from krishna_ai.history.cards import write_card

    persona = get_persona(load_personas(persona_dirs(args.prompts)), args.persona)
    print(f"wrote {write_card(persona, args.output, args.image)}")
    print("  not carried: knowledge bank, LoRA adapters, style checks (a card has no place for them)", file=sys.stderr)
    return 0


def _store(args: argparse.Namespace) -> HistoryStore:
    return open_store(args.db)


def _list(args: argparse.Namespace) -> int:
    chats = _store(args).chats(args.user, args.search)
    for c in chats:
        if args.json:
            print(json.dumps({"id": c.id, "title": c.title, "persona": c.persona,
                              "updated_at": c.updated_at.isoformat()}, ensure_ascii=False))
        else:
            print(f"{c.id}  {c.updated_at:%Y-%m-%d %H:%M}  {c.persona:<8}  {c.title}")
    if not chats and not args.json:
        print(f"no chats for {args.user!r}" + (f" matching {args.search!r}" if args.search else ""), file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from krishna_ai.core.personas import load_personas, persona_dirs
    from krishna_ai.history.chatfile import to_json, to_markdown

    store = _store(args)
    chat_id = args.chat_id
    if chat_id == "latest":
        recent = store.chats(args.user, limit=1)
        if not recent:
            raise InputError(f"no chats for {args.user!r} yet")
        chat_id = recent[0].id
    chat = store.chat(args.user, chat_id)
    persona = load_personas(persona_dirs(args.prompts)).get(chat.persona)
    text = (json.dumps(to_json(chat), ensure_ascii=False, indent=1) + "\n" if args.format == "json"
            else to_markdown(chat, persona.name if persona else None))
    if args.output is None:
        sys.stdout.write(text)
        return 0
    write_text(args.output, text)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace) -> int:
    from krishna_ai.core.personas import load_personas, persona_dirs
    from krishna_ai.history.chatfile import import_chat

    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    chat = import_chat(_store(args), args.user, path.read_bytes(), path.name,
                       set(load_personas(persona_dirs(args.prompts))))
    print(chat.id)
    return 0


def _check(args: argparse.Namespace) -> int:
    store = _store(args)
    problems = store.check()
    for p in problems:
        print(p)
    print(f"{store.where}: " + ("ok" if not problems else f"{len(problems)} problem(s)"), file=sys.stderr)
    return 1 if problems else 0


def _feedback(args: argparse.Namespace) -> int:
    from krishna_ai.core.personas import load_personas, persona_dirs
    from krishna_ai.history.chatfile import export_feedback

    counts = export_feedback(_store(args), args.out, user=args.user, personas=load_personas(persona_dirs(args.prompts)),
                             include_imported=args.include_imported)
    for persona, n in sorted(counts.items()):
        print(f"{persona}: {n['sft']} liked replies (sft-{persona}.jsonl), {n['dpo']} preference pairs "
              f"(dpo-{persona}.jsonl)")
    if not counts:
        print("no liked, disliked or retried replies yet: nothing to export", file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
