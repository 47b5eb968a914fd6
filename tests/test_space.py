"""`space`: the assembled Space folder, its ZeroGPU wrapping, and its app.py served and chatted with."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from gradio_client import Client

from krishna_ai.cli.main import main as cli
from krishna_ai.core.personas import load_persona
from krishna_ai.ship.space import pinned
from tests.conftest import REPO, free_port, wait_for_port


def front_matter(readme: str) -> dict:
    head, sep, _ = readme.removeprefix("---\n").partition("\n---\n")
    assert sep
    return yaml.safe_load(head)


def load_template_app(folder, name):
    spec = importlib.util.spec_from_file_location(name, folder / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    out = tmp_path_factory.mktemp("space") / "krishna"
    assert cli(["space", "--out", str(out), "--persona", "krishna", "--space-id", "someone/krishna"]) == 0
    return out


def test_space_folder_contents(space):
    assert sorted(p.name for p in space.iterdir()) == ["README.md", "adapters", "app.py", "krishna_ai", "prompts",
                                                       "requirements.txt", "space.json"]
    # the persona's light-tier adapter travels with it, at the same path relative to prompts/
    assert (space / "adapters" / "krishna-light" / "adapter_model.safetensors").is_file()
    # and the matcher its counsel cards are chosen with, so the persona loads there
    assert (space / "adapters" / "krishna-matcher" / "adapter_model.safetensors").is_file()
    krishna = load_persona(space / "prompts" / "krishna.toml")
    assert Path(krishna.counsel.matcher).is_relative_to(space)
    assert (REPO / "adapters" / "krishna-light" / "eval-heldout.json").is_file()
    assert not list((space / "adapters").rglob("eval-*.json"))  # the evaluations stay in the repository
    meta = front_matter((space / "README.md").read_text())
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == pinned(REPO / "requirements.txt", "gradio")
    assert meta["app_file"] == "app.py" and meta["python_version"] == "3.11" and meta["license"] == "gemma"
    assert meta["suggested_hardware"] == "cpu-basic" and meta["models"] == ["google/gemma-3-270m"]
    assert len(meta["short_description"]) <= 60 and {"title", "emoji", "colorFrom", "colorTo"} <= set(meta)
    assert 'Client("someone/krishna")' in (space / "README.md").read_text()
    assert (space / "requirements.txt").read_text() == (REPO / "requirements.txt").read_text()
    assert json.loads((space / "space.json").read_text()) == {"model": "light", "persona": "krishna",
                                                              "gpu_duration": 120}
    assert sorted(p.name for p in (space / "prompts").glob("*.toml")) == ["aurora.toml", "krishna.toml",
                                                                          "maize.toml", "pet.toml"]
    assert (space / "krishna_ai" / "studio" / "service.py").is_file() and not list(space.rglob("__pycache__"))


def test_zero_gpu_build_and_wrapping(tmp_path, monkeypatch):
    out = tmp_path / "zero"
    assert cli(["space", "--out", str(out), "--model", "e4b", "--hardware", "zero-a10g", "--gpu-duration", "90"]) == 0
    assert (out / "requirements.txt").read_text().splitlines()[-1] == "spaces==0.51.3"
    meta = front_matter((out / "README.md").read_text())
    assert meta["suggested_hardware"] == "zero-a10g" and meta["models"] == ["google/gemma-3n-E4B-it"]

    durations = []
    fake = types.ModuleType("spaces")

    def GPU(duration=None):
        durations.append(duration)
        return lambda fn: lambda *a, **k: ("on gpu", fn(*a, **k))

    fake.GPU = GPU
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    app = load_template_app(out, "zero_space_app")
    studio = types.SimpleNamespace(chat=lambda *a, **k: "reply")
    assert app.zero_gpu(studio, 90).chat("hi") == ("on gpu", "reply") and durations == [90]

    monkeypatch.setitem(sys.modules, "spaces", None)  # not installed: the studio is left as it is
    app = load_template_app(out, "plain_space_app")
    plain = types.SimpleNamespace(chat=lambda *a, **k: "reply")
    assert app.spaces is None and app.zero_gpu(plain, 90).chat("hi") == "reply"


def test_gguf_space_pins_llama_cpp(tmp_path):
    out = tmp_path / "gguf"
    assert cli(["space", "--out", str(out), "--model", "light-gguf"]) == 0
    reqs = (out / "requirements.txt").read_text().splitlines()
    pin = pinned(REPO / "requirements-llamacpp.txt", "llama-cpp-python")
    assert reqs[-1] == f"llama-cpp-python=={pin}" and reqs[:-2] == (REPO / "requirements.txt").read_text().splitlines()
    assert json.loads((out / "space.json").read_text())["model"] == "light-gguf"


def test_space_errors(space, tmp_path, capsys):
    assert cli(["space", "--out", str(space)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert cli(["space", "--out", str(tmp_path / "x"), "--persona", "zeus", "--model", str(tmp_path),
                "--description", "x" * 61]) == 2
    err = capsys.readouterr().err
    assert "--persona 'zeus': unknown" in err and "local folder" in err and "60 characters, got 61" in err


@pytest.mark.slow
def test_space_app_serves_chat(space, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # krishna_ai must come from the Space
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    log = tmp_path / "app.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=space, env=env,
                                stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, 120, log)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        chunks = list(client.submit("I failed my exam. What should I do?", "krishna", None, 0.0, None, None, 8,
                                    api_name="/chat"))
        assert chunks and chunks[-1].strip()
        assert all(chunks[i + 1].startswith(chunks[i]) for i in range(len(chunks) - 1))
        # a client cannot send the Space's requests (and its API key) to a server of its own, nor read a path
        for model in ("openai:http://127.0.0.1:9/v1", "google/gemma-3n-E4B-it", "/etc", "e4b-gguf"):
            with pytest.raises(Exception, match="not offered by this server"):
                client.predict("hi", "krishna", api_name="/reply", model=model)
        with pytest.raises(Exception, match="unknown MatFormer size"):
            client.predict("hi", "krishna", api_name="/reply", slice="/etc/passwd")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
