"""krishna_ai studio: `python app.py` starts the chat UI (the light tier runs offline on CPU).

    python app.py                                   # http://127.0.0.1:7860, Krishna persona, light tier
    python app.py --persona maize --model e4b       # Gemma 3n E4B (4-bit on a GPU)
    python app.py --model ./my-finetune --adapter ./lora --share --auth me:secret

Importing this module builds nothing and loads no model; `build()` makes the Blocks app.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from krishna_ai.errors import KrishnaError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python app.py", description=__doc__.split("\n")[0])
    ap.add_argument("--persona", default="krishna", help="persona shown first (default: krishna)")
    ap.add_argument("--model", default="light",
                    help="tier (light, light-gguf, e2b, e4b), a local model folder, a hub id, or a .gguf file "
                         "(light-gguf and .gguf files run with llama.cpp; default: light)")
    ap.add_argument("--adapter", default=None, help="LoRA adapter folder merged into --model at load")
    ap.add_argument("--prompts", action="append", default=[], metavar="DIR",
                    help="extra persona folder (repeatable); its files override shipped ids")
    ap.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--share", action="store_true", help="create a public gradio.live link")
    ap.add_argument("--auth", default=None, metavar="USER:PASSWORD", help="require a login")
    ap.add_argument("--preload", action="store_true", help="load the model before serving")
    return ap.parse_args(argv)


def parse_auth(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--auth must be USER:PASSWORD, both non-empty")
    return user, password


def build(args: argparse.Namespace):
    from krishna_ai.personas import load_personas, persona_dirs
    from krishna_ai.studio import Studio
    from krishna_ai.ui import build_demo

    personas = load_personas(persona_dirs(args.prompts))
    if args.persona not in personas:
        raise SystemExit(f"unknown persona {args.persona!r}; available: {', '.join(sorted(personas))}")
    adapters = {args.model: args.adapter} if args.adapter else None
    studio = Studio(personas, default_model=args.model, adapters=adapters)
    if args.preload:
        try:
            studio.engine()
        except KrishnaError as exc:  # keep serving: the UI can load another tier
            print(f"warning: could not preload {args.model!r}: {exc}", file=sys.stderr)
    return build_demo(studio, persona=args.persona), studio


MAX_UPLOAD = "20mb"


def launch(demo, args: argparse.Namespace, **extra):
    """Queue and launch with the app's limits: one generation at a time per model, capped uploads."""
    return demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=parse_auth(args.auth),
        max_file_size=MAX_UPLOAD, show_error=True, **extra)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    auth = parse_auth(args.auth)
    if args.share and auth is None:
        warnings.warn("--share without --auth: anyone with the link can use this app and its model. "
                      "Add --auth USER:PASSWORD.", stacklevel=1)
        print("WARNING: --share without --auth exposes the app to anyone with the link; "
              "add --auth USER:PASSWORD", file=sys.stderr)
    try:
        demo, _ = build(args)
    except KrishnaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    launch(demo, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
