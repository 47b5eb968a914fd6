"""krishna_ai studio: `python app.py` starts the chat UI (the light tier runs offline on CPU).

    python app.py                                   # http://127.0.0.1:7860, Krishna persona, light tier
    python app.py --persona maize --model e4b       # Gemma 3n E4B (4-bit on a GPU)
    python app.py --model ./my-finetune --adapter ./lora --share --auth-file logins.txt

Clients choose only among the tiers and the models named here (--model, --allow-model); the model is
loaded (and the light tier converted, once) before the server starts, with progress in the terminal.

Importing this module builds nothing and loads no model; `build()` makes the Blocks app.
"""

from __future__ import annotations

import argparse
import sys
import threading
import warnings
from pathlib import Path

from krishna_ai.core.errors import KrishnaError
from krishna_ai.ship.serve import port_free

REMOTE_CONCURRENCY = 32
"""Replies in flight at once against a model server: it queues what its slots cannot take yet."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python app.py", description=__doc__.split("\n")[0])
    ap.add_argument("--persona", default="krishna", help="persona shown first (default: krishna)")
    ap.add_argument("--model", default=None,
                    help="tier (light, light-gguf, e2b, e4b), a local model folder, a hub id, or a .gguf file "
                         "(light-gguf and .gguf files run with llama.cpp; default: light-gguf when "
                         "llama-cpp-python is installed, else light)")
    ap.add_argument("--adapter", default=None, help="LoRA adapter folder merged into --model at load")
    ap.add_argument("--prompts", action="append", default=[], metavar="DIR",
                    help="extra persona folder (repeatable); its files override shipped ids")
    ap.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--share", action="store_true", help="create a public gradio.live link")
    ap.add_argument("--auth", default=None, metavar="USER:PASSWORD", help="require a login")
    ap.add_argument("--no-login", dest="no_login", action="store_true",
                    help="serve beyond this machine (--share, --host other than loopback) without a login, on purpose")
    ap.add_argument("--admin", action="append", default=[], metavar="USER",
                    help="a login who may change what the server runs: save personas (repeatable; without logins "
                         "the one local user may, and nobody on an app served beyond this machine)")
    ap.add_argument("--auth-file", dest="auth_file", default=None, metavar="FILE",
                    help="logins, one user:password per line (also $KRISHNA_AI_AUTH: on lines, or after a comma)")
    ap.add_argument("--job-threads", dest="job_threads", type=int, default=None, metavar="N",
                    help="CPU threads of a training/evaluation/export job (default: one fewer than the machine has, "
                         "at least 1; jobs also run below the app: SCHED_IDLE, else nice 19)")
    ap.add_argument("--allow-model", dest="allow_model", action="append", default=[], metavar="SPEC",
                    help="another model clients may pick (repeatable); by default only the tiers and --model")
    ap.add_argument("--allow-any-model", dest="allow_any_model", action="store_true",
                    help="let clients load any folder or hub id (never with --share)")
    ap.add_argument("--server-slots", dest="server_slots", type=int, default=0, metavar="N",
                    help="serve light-gguf replies through one llama-server (router mode: every persona's model "
                         "behind it, N slots each, decoded in batches), started and restarted by the app "
                         "(needs requirements-server.txt; default 0: in this process)")
    ap.add_argument("--max-loaded", dest="max_loaded", type=int, default=None, metavar="N",
                    help="models kept loaded at once, least recently used unloaded first (default: one per persona "
                         "and one more on the light tiers, whose models are small; else 3)")
    ap.add_argument("--concurrency", type=int, default=None, metavar="N",
                    help=f"replies generated at once (default: 1 in-process; {REMOTE_CONCURRENCY} for a model "
                         "server (--model openai:URL), which batches them)")
    ap.add_argument("--api-key-file", dest="api_key_file", default=None, metavar="FILE",
                    help="keys for the OpenAI-compatible API (/v1) and /metrics: one user:key per line (also "
                         "$KRISHNA_AI_API_KEYS); each key acts as its user")
    ap.add_argument("--user-replies", dest="user_replies", type=int, default=2, metavar="N",
                    help="replies one user (a login, else a client address) may have in progress at once (default 2)")
    ap.add_argument("--user-rate", dest="user_rate", default="30/minute", metavar="RATE",
                    help="requests one user may make (N/second, N/minute, N/hour; default 30/minute; 'off': none)")
    ap.add_argument("--db", default=None, metavar="URL",
                    help="where chats are saved: any SQLAlchemy URL (default: $KRISHNA_AI_DB, else SQLite at "
                         "$KRISHNA_AI_DATA/history.db, ~/.local/share/krishna_ai by default)")
    ap.add_argument("--no-history", dest="history", action="store_false", default=True,
                    help="save nothing: chats live in the browser tab only")
    ap.add_argument("--preload", dest="preload", action="store_true", default=True,
                    help="load the model (and convert the light tier, once) before serving: the default")
    ap.add_argument("--no-preload", dest="preload", action="store_false",
                    help="start serving at once and load the model on the first message")
    return ap.parse_args(argv)


def parse_auth(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--auth must be USER:PASSWORD, both non-empty")
    return user, password


def login_guard(args: argparse.Namespace):
    """Gradio's auth callable (slows repeated failures), or None when no login is configured."""
    from krishna_ai.studio.access import LoginGuard, load_credentials

    parse_auth(args.auth)  # the clear message for a malformed --auth
    pairs = load_credentials(args.auth, getattr(args, "auth_file", None))
    return LoginGuard(pairs).login if pairs else None


def open_history(args: argparse.Namespace):
    """(store, None), or (None, why) when history is off: a broken database never stops the app from chatting."""
    if not getattr(args, "history", True):
        return None, "started with --no-history"
    from krishna_ai.history.store import open_store

    try:
        store = open_store(getattr(args, "db", None))
    except KrishnaError as exc:
        print(f"warning: chats will not be saved: {exc}", file=sys.stderr)
        return None, str(exc)
    print(f"Chats are saved in {store.where}", file=sys.stderr)
    return store, None


def build(args: argparse.Namespace):
    from krishna_ai.core.personas import load_personas, persona_dirs
    from krishna_ai.studio.service import Studio
    from krishna_ai.studio.ui import build_demo

    saved = saved_personas_dir()
    personas = load_personas(persona_dirs([*args.prompts, *([saved] if saved.is_dir() else [])]))
    if args.persona not in personas:
        raise SystemExit(f"unknown persona {args.persona!r}; available: {', '.join(sorted(personas))}")
    from krishna_ai.runtime.tiers import GGUF_TIER, default_tier, is_gguf_spec
    from krishna_ai.studio.access import ModelPolicy

    args.model = args.model or default_tier()

    if getattr(args, "allow_any_model", False) and args.share:
        raise SystemExit("--allow-any-model cannot be combined with --share: anyone with the link could make "
                         "this machine download and load any model")
    if is_gguf_spec(args.model):
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            from krishna_ai.runtime.llamacpp import INSTALL_HINT

            raise SystemExit(f"--model {args.model}: {INSTALL_HINT}")
    adapters = {args.model: args.adapter} if args.adapter else None
    policy = ModelPolicy([args.model, *getattr(args, "allow_model", [])],
                         open_to_any=getattr(args, "allow_any_model", False))
    from krishna_ai.runtime.probe import is_remote_spec

    router = start_router(args, personas)
    concurrency = args.concurrency if args.concurrency is not None else (
        REMOTE_CONCURRENCY if is_remote_spec(args.model) else router.slots * len(router.models) if router else 1)
    if concurrency < 1:
        raise SystemExit(f"--concurrency {concurrency}: give 1 or more")
    from krishna_ai.studio.access import UserLimits

    rate = getattr(args, "user_rate", "30/minute")
    limits = UserLimits(getattr(args, "user_replies", 2), None if rate in (None, "", "off", "none") else rate)
    store, history_error = open_history(args)
    from krishna_ai.studio.metrics import Metrics

    # each persona's light model is its own file (its adapter merged): with fewer kept than personas in use, replies
    # across personas unload one another ("unloaded to make room ... ask again" under load)
    max_loaded = args.max_loaded if args.max_loaded is not None else (
        len(personas) + 1 if args.model in ("light", GGUF_TIER) else 3)
    if max_loaded < 1:
        raise SystemExit(f"--max-loaded {max_loaded}: give 1 or more")
    studio = Studio(personas, default_model=args.model, adapters=adapters, policy=policy, concurrency=concurrency,
                    store=store, history_error=history_error, limits=limits, metrics=Metrics(),
                    admins=admins(args), prompts_dir=saved, loader=router.load if router else None,
                    max_loaded=max_loaded)
    studio.router = router
    studio.jobs = start_jobs(studio, args, [*args.prompts, str(saved)])
    if args.preload:  # the engine the first persona's first reply uses (its adapter merged), not the bare base
        print(f"Loading {args.model} for {args.persona}…", file=sys.stderr)
        try:
            studio.engine(args.model, studio.persona(args.persona))
        except KrishnaError as exc:  # keep serving: the UI can load another tier
            print(f"warning: could not preload {args.model!r}: {exc}", file=sys.stderr)
        threading.Thread(target=warm_retrieval, args=(list(studio.personas.values()),), daemon=True,
                         name="warm retrieval").start()
    return build_demo(studio, persona=args.persona), studio


def warm_retrieval(personas: list) -> None:
    """Load each bank and, where cards are ranked by meaning, the sentence model and the cards' vectors (about
    8 s on 2 cores, most of it importing PyTorch), in the background: the first question does not wait for them.
    A failure here is the first question's to report."""
    from krishna_ai.core.grounding import ground

    for persona in personas:
        try:
            ground(persona, "warm up")
        except KrishnaError:
            continue


def start_router(args: argparse.Namespace, personas):
    """With --server-slots N: llama-server in router mode over every persona's light GGUF, supervised, stopped
    when the app ends (`ship/router.py`); else None."""
    slots = getattr(args, "server_slots", 0)
    if not slots:
        return None
    from krishna_ai.runtime.tiers import GGUF_TIER

    if args.model != GGUF_TIER:
        raise SystemExit(f"--server-slots serves the {GGUF_TIER} tier; --model {args.model} cannot go through it")
    import atexit

    from krishna_ai.ship.router import Router

    try:
        print(f"Starting llama-server (router) for {len(personas)} personas, {slots} slots each…", file=sys.stderr)
        router = Router.for_personas(personas, slots=slots).start()
    except KrishnaError as exc:
        raise SystemExit(f"--server-slots {slots}: {exc}") from None
    atexit.register(router.stop)
    print(f"llama-server serves {', '.join(router.models)} at {router.url}", file=sys.stderr)
    return router


def start_jobs(studio, args: argparse.Namespace, prompts: list[str]):
    """The workbench's job runner (Train, Evaluate, Export), started; None without a database or an admin. Jobs
    a previous app left running are marked interrupted; the adapters of finished training runs are offered."""
    if studio.store is None or studio.admins == frozenset():
        return None
    from pathlib import Path

    from krishna_ai.history.jobs import jobs
    from krishna_ai.studio.jobs import JobRunner
    from krishna_ai.studio.train_tab import on_done

    runner = JobRunner(studio.store, studio.store.data_dir / "jobs", threads=args.job_threads, prompts=prompts)
    hook = on_done(studio)
    for job in reversed(jobs(studio.store, "train")):
        if job.status == "done" and Path(job.result.get("adapter") or "").is_dir():
            hook(job)
    runner.on_done.append(hook)
    for job in runner.start():
        print(f"job {job.id} ({job.title}) was running when the app ended: marked interrupted", file=sys.stderr)
    return runner


def is_public(args: argparse.Namespace) -> bool:
    """Served beyond this machine: a share link, or an interface other than loopback."""
    return bool(args.share) or args.host not in ("127.0.0.1", "localhost", "::1")


def saved_personas_dir() -> Path:
    """Where the Personas tab saves: <data dir>/prompts (searched after the shipped folder and --prompts)."""
    from krishna_ai.history.schema import data_root

    return data_root() / "prompts"


def admins(args: argparse.Namespace) -> frozenset[str] | None:
    """Who may save personas: the --admin logins; without logins, the local user (None), or nobody when the app
    is served beyond this machine."""
    from krishna_ai.studio.access import load_credentials

    named = frozenset(getattr(args, "admin", []) or [])
    logins = load_credentials(args.auth, getattr(args, "auth_file", None))
    if logins:
        unknown = sorted(named - {user for user, _ in logins})
        if unknown:
            raise SystemExit(f"--admin {', '.join(unknown)}: not a login (--auth / --auth-file)")
        return named
    if named:
        raise SystemExit("--admin names logins: add --auth USER:PASSWORD (or --auth-file)")
    return frozenset() if is_public(args) else None


MAX_UPLOAD = "20mb"


def launch(demo, args: argparse.Namespace, concurrency: int = 1, store=None, studio=None, **extra):
    """Queue and launch with the app's limits: `concurrency` generations at once, capped uploads; the saved
    chats' images folder (of `store`) is the one folder of ours Gradio may serve, so reopened chats show them.
    With `studio`, the personas are also an OpenAI-compatible API (/v1) with /metrics, on the same port."""
    allowed = [str(store.data_dir / "images")] if store is not None else []
    auth = login_guard(args)
    app_kwargs = extra.setdefault("app_kwargs", {})
    if auth is not None:  # failed logins are also capped per client address
        from starlette.middleware import Middleware

        from krishna_ai.studio.access import LoginLimit

        app_kwargs.setdefault("middleware", []).append(Middleware(LoginLimit))
    if studio is not None:
        from krishna_ai.studio.access import ApiKeys
        from krishna_ai.studio.openai_api import routes

        keys = ApiKeys.load(getattr(args, "api_key_file", None))
        app_kwargs.setdefault("routes", []).extend(routes(studio, keys, logins=auth is not None))
    return demo.queue(default_concurrency_limit=concurrency).launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=auth,
        max_file_size=MAX_UPLOAD, show_error=True, allowed_paths=allowed, **extra)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        auth = login_guard(args)
        from krishna_ai.studio.access import ApiKeys

        ApiKeys.load(args.api_key_file)  # a bad key file is refused before anything loads
    except KrishnaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not port_free(args.host, args.port):
        print(f"error: port {args.port} is in use on {args.host}: pass --port N (another app, or this one "
              "started twice?)", file=sys.stderr)
        return 2
    public = is_public(args)
    if public and auth is None and not args.no_login:
        print(f"error: {'--share' if args.share else f'--host {args.host}'} serves the app beyond this machine, and "
              "no login is set: anyone who reaches it could use the model and every chat would be one user's. "
              "Add --auth USER:PASSWORD (or --auth-file), or pass --no-login to do this on purpose.", file=sys.stderr)
        return 2
    if args.share and auth is None:
        warnings.warn("--share without --auth: anyone with the link can use this app and its model. "
                      "Add --auth USER:PASSWORD.", stacklevel=1)
        print("WARNING: --share without --auth exposes the app to anyone with the link; "
              "add --auth USER:PASSWORD", file=sys.stderr)
    try:
        demo, studio = build(args)
    except KrishnaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        launch(demo, args, concurrency=studio.concurrency, store=studio.store, studio=studio)
    except KrishnaError as exc:  # a bad --api-key-file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
