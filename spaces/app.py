"""krishna_ai chat studio as a Hugging Face Space (assembled by `python -m krishna_ai space`).

The Space runs `python app.py`; so can you, locally:

    python app.py --port 7860                       # the model and persona chosen at build time (space.json)
    python app.py --share --auth me:secret          # a public link, behind a login

Nothing is loaded at import. When the `spaces` package is importable (the Space was built for ZeroGPU
hardware), every reply runs inside `@spaces.GPU(duration=...)`, which borrows a GPU for that call.
ZeroGPU runs such a call in a forked process, so a model loaded inside it would be gone afterwards: on
ZeroGPU the model is loaded once at startup instead, in bf16 on "cuda" (ZeroGPU keeps it until a call
needs it; bitsandbytes 4-bit cannot be placed that way). Without `spaces` (and off ZeroGPU) the studio
runs exactly as `python app.py` of the krishna_ai repository does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

try:  # ZeroGPU hardware: `spaces` patches torch, so it is imported before anything imports torch
    import spaces
except ImportError:
    spaces = None

HERE = Path(__file__).resolve().parent
SETTINGS: dict[str, Any] = {"model": "light", "persona": "krishna", "gpu_duration": 120}
if (HERE / "space.json").is_file():
    SETTINGS.update(json.loads((HERE / "space.json").read_text(encoding="utf-8")))


def on_zero_gpu() -> bool:
    return spaces is not None and os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def zero_gpu(studio: Any, duration: int) -> Any:
    """Wrap the studio's reply generator for ZeroGPU when `spaces` is installed; otherwise leave it be."""
    if spaces is not None:
        studio.chat = spaces.GPU(duration=duration)(studio.chat)
    return studio


def make_studio(personas: dict[str, Any], model: str, gpu_duration: int, persona: str) -> Any:
    """The studio, offering clients only the model this Space was built with (and the built-in tiers): a client
    can never point it at a server of its own (`openai:http://…`, where the Space's API key would go), a hub id
    or a path, nor name a MatFormer slice by file."""
    from krishna_ai.runtime.load import load_engine
    from krishna_ai.studio.access import ModelPolicy
    from krishna_ai.studio.service import Studio

    policy = ModelPolicy([model])
    if not on_zero_gpu():
        return zero_gpu(Studio(personas, default_model=model, policy=policy), gpu_duration)

    def loader(spec: str, adapter: str | None) -> Any:
        return load_engine(spec, adapter, quantize="none", device="cuda")

    studio = Studio(personas, default_model=model, loader=loader, policy=policy)
    # In this process, before any forked GPU call: the engine the first persona uses (its adapter merged).
    studio.engine(model, studio.persona(persona))
    return zero_gpu(studio, gpu_duration)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python app.py", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=SETTINGS["model"], help="tier (light, e2b, e4b) or hub id")
    ap.add_argument("--persona", default=SETTINGS["persona"], help="persona shown first")
    ap.add_argument("--host", default=None, help="interface (default: $GRADIO_SERVER_NAME, else 127.0.0.1)")
    ap.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT, else 7860)")
    ap.add_argument("--share", action="store_true", help="create a public gradio.live link (add --auth)")
    ap.add_argument("--auth", default=None, metavar="USER:PASSWORD", help="require a login")
    ap.add_argument("--gpu-duration", dest="gpu_duration", type=int, default=SETTINGS["gpu_duration"],
                    help="ZeroGPU: seconds of GPU time one reply may take")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from krishna_ai.core.errors import KrishnaError
    from krishna_ai.studio.access import LoginGuard, LoginLimit, load_credentials

    if args.auth is not None:
        user, sep, password = args.auth.partition(":")
        if not (sep and user and password):
            raise SystemExit("--auth must be USER:PASSWORD, both non-empty")
    try:  # --auth, and $KRISHNA_AI_AUTH (a Space secret) for logins kept out of the command line
        logins = load_credentials(args.auth, None)
    except KrishnaError as exc:
        raise SystemExit(f"error: {exc}") from None
    auth = LoginGuard(logins).login if logins else None
    if args.share and auth is None:
        print("WARNING: --share without --auth exposes the app to anyone with the link; add --auth USER:PASSWORD",
              file=sys.stderr)

    from krishna_ai.core.personas import load_personas
    from krishna_ai.studio.ui import build_demo

    personas = load_personas()
    if args.persona not in personas:
        raise SystemExit(f"unknown persona {args.persona!r}; available: {', '.join(sorted(personas))}")
    studio = make_studio(personas, args.model, args.gpu_duration, args.persona)
    demo = build_demo(studio, persona=args.persona)
    extra: dict[str, Any] = {}
    if auth is not None:  # failed logins capped per client address too
        from starlette.middleware import Middleware

        extra["app_kwargs"] = {"middleware": [Middleware(LoginLimit)]}
    demo.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, share=args.share,
                                                    auth=auth, max_file_size="20mb", show_error=True, **extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
