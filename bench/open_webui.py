"""A real Open WebUI pointed at the app's OpenAI-compatible API: a chat through Open WebUI's own API reaches a
persona and comes back with its reply.

    python3 -m venv /tmp/owui && /tmp/owui/bin/pip install open-webui==0.12.4   # its own venv: ~100 packages
    python bench/open_webui.py --open-webui /tmp/owui/bin/open-webui

Open WebUI is not a dependency of this project (it pins its own versions of half of them), so it lives in a
venv of its own and this check is run by hand, not in CI. What it does, all on 127.0.0.1 and offline:

1. `python app.py --auth asha:… --api-key-file K` (light-gguf, logins on, one API key that acts as asha);
2. `open-webui serve` with `OPENAI_API_BASE_URL=<app>/v1`, that key as `OPENAI_API_KEY`, Ollama off, offline;
3. through Open WebUI's own HTTP API: sign up its first user (its admin), list its models (the personas must
   be there), then `POST /api/chat/completions` with `model: "krishna"`, streamed and not;
4. checks: the reply is the persona's (addressed to Partha), the app counted the requests under its `openai`
   endpoint (`/metrics`), and what Open WebUI passed back of the `krishna_ai` field.

Prints a table of what happened and the exit status says whether every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, stop_child, table, wait_http

from krishna_ai.ship.serve import free_port


def main() -> int:
    import httpx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--open-webui", dest="open_webui", required=True, metavar="BIN",
                    help="the open-webui command of its own venv")
    ap.add_argument("--question", default="I failed my exam and feel ashamed. What should I do?")
    args = ap.parse_args()
    if not Path(args.open_webui).is_file():
        raise SystemExit(f"--open-webui {args.open_webui}: no such file (install Open WebUI in a venv of its own)")

    rows: list[list[str]] = []
    checks: dict[str, bool] = {}
    key = "k-" + secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="open-webui-") as folder:
        work = Path(folder)
        (work / "keys.txt").write_text(f"asha:{key}\n")
        app_port, ui_port = free_port(), free_port()
        app_log, ui_log = work / "app.log", work / "open-webui.log"
        login = "asha:" + secrets.token_hex(8)
        app = subprocess.Popen([sys.executable, "app.py", "--port", str(app_port), "--auth", login,
                                "--api-key-file", str(work / "keys.txt"), "--no-history"], cwd=REPO,
                               env={**os.environ, "KRISHNA_AI_DATA": str(work / "data")},
                               stdout=app_log.open("ab"), stderr=subprocess.STDOUT)
        ui = None
        try:
            api = f"http://127.0.0.1:{app_port}/v1"
            auth = {"Authorization": f"Bearer {key}"}
            rows.append(["the app answers /v1/models", f"{wait_http(f'{api}/models', app, app_log, 300, auth):.1f} s"])
            env = {**os.environ, "DATA_DIR": str(work / "owui"), "OPENAI_API_BASE_URL": api, "OPENAI_API_KEY": key,
                   "ENABLE_OLLAMA_API": "false", "OFFLINE_MODE": "true", "HF_HUB_OFFLINE": "1",
                   "ENABLE_OPENAI_API": "true", "WEBUI_SECRET_KEY": secrets.token_hex(16),
                   "ENABLE_VERSION_UPDATE_CHECK": "false", "ANONYMIZED_TELEMETRY": "false",
                   "SCARF_NO_ANALYTICS": "true", "DO_NOT_TRACK": "true", "RAG_EMBEDDING_MODEL_AUTO_UPDATE": "false"}
            (work / "owui").mkdir()
            ui = subprocess.Popen([args.open_webui, "serve", "--host", "127.0.0.1", "--port", str(ui_port)],
                                  cwd=work, env=env, stdout=ui_log.open("ab"), stderr=subprocess.STDOUT)
            base = f"http://127.0.0.1:{ui_port}"
            rows.append(["Open WebUI up (/health)", f"{wait_http(f'{base}/health', ui, ui_log, 600):.1f} s"])
            with httpx.Client(base_url=base, timeout=300) as http:
                signup = http.post("/api/v1/auths/signup", json={"name": "Asha", "email": "asha@example.com",
                                                                  "password": secrets.token_hex(12)})
                signup.raise_for_status()
                http.headers["Authorization"] = f"Bearer {signup.json()['token']}"
                models = sorted(m["id"] for m in http.get("/api/models").raise_for_status().json()["data"])
                rows.append(["models Open WebUI lists", ", ".join(models)])
                checks["Open WebUI lists the four personas"] = {"krishna", "maize", "aurora", "pet"} <= set(models)
                ask = {"model": "krishna", "messages": [{"role": "user", "content": args.question}]}
                t0 = time.monotonic()
                reply = http.post("/api/chat/completions", json={**ask, "stream": False}).raise_for_status().json()
                text = reply["choices"][0]["message"]["content"]
                rows.append([f"Krishna's reply through Open WebUI ({time.monotonic() - t0:.1f} s)",
                             text.replace("\n", " ").replace("|", "/")])
                checks["the reply is Krishna's (addresses Partha)"] = "Partha" in text
                extra = reply.get("krishna_ai")
                rows.append(["`krishna_ai` field passed through",
                             "yes: " + ", ".join(sorted(extra)) if extra else "no"])
                pieces = []
                with http.stream("POST", "/api/chat/completions", json={**ask, "stream": True}) as resp:
                    resp.raise_for_status()
                    for line in resp.iter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            chunk = json.loads(line[6:])
                            pieces += [c["delta"].get("content") or "" for c in chunk.get("choices", [])]
                streamed = "".join(pieces)
                rows.append(["streamed reply: chunks, characters",
                             f"{sum(1 for p in pieces if p)}, {len(streamed)}"])
                checks["the streamed reply is Krishna's too"] = "Partha" in streamed
            metrics = httpx.get(f"http://127.0.0.1:{app_port}/metrics", headers=auth).text
            counted = [line for line in metrics.splitlines() if line.startswith("krishna_ai_requests_total{")
                       and 'endpoint="openai"' in line and 'persona="krishna"' in line]
            rows.append(["the app's /metrics", "; ".join(counted) or "nothing counted"])
            checks["the app counted Open WebUI's requests (endpoint openai)"] = bool(counted)
            version = subprocess.run([str(Path(args.open_webui).parent / "python"), "-c",
                                      "import importlib.metadata as m; print(m.version('open-webui'))"],
                                     capture_output=True, text=True).stdout.strip()
            rows.insert(0, ["Open WebUI version", version])
        finally:
            if ui is not None:
                stop_child(ui, 20)
            stop_child(app, 20)
    print(table(["step", "result"], rows))
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if checks and all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
