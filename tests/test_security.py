"""Security: login, upload limits, no files served outside the app's own folders, no pickles or remote code."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from gradio_client import Client

import app
from krishna_ai.studio.service import Studio
from krishna_ai.studio.ui import build_demo
from tests.conftest import free_port, model_written_personas

pytestmark = pytest.mark.slow


@pytest.fixture
def served(scripted):
    """The app's own launch (app.launch: auth, upload cap) around a scripted model."""
    demos = []

    def start(*argv):
        args = app.parse_args(["--port", str(free_port()), *argv])
        demo = build_demo(Studio(model_written_personas(), loader=lambda spec, adapter: scripted(["fine"])))
        app.launch(demo, args, prevent_thread_lock=True, quiet=True)
        demos.append(demo)
        return f"http://127.0.0.1:{args.port}/"

    yield start
    for demo in demos:
        demo.close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_auth_refuses_a_wrong_password(served):
    url = served("--auth", "krishna:s3cret")
    with pytest.raises(Exception, match="(?i)login|auth|credentials|401|403"):
        Client(url, auth=("krishna", "wrong"), verbose=False)
    status, _ = get(url + "gradio_api/info")
    assert status in (401, 403)
    client = Client(url, auth=("krishna", "s3cret"), verbose=False)
    assert client.predict("Write a poem about the sea", "pet", api_name="/chat") == "fine"


def test_no_files_outside_the_app_folders(served):
    url = served()
    for path in ("gradio_api/file=/etc/passwd", "gradio_api/file=../../../../etc/passwd",
                 "gradio_api/file=%2Fetc%2Fpasswd", "gradio_api/file=app.py",
                 "gradio_api/file=krishna_ai/studio/service.py",
                 "file=/etc/passwd"):
        status, body = get(url + path)
        assert status >= 400 and b"root:" not in body and b"def load_model" not in body, path


def test_upload_size_is_capped(served, tmp_path):
    url = served()
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (21 * 2**20))
    boundary = "----krishna"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + big.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "gradio_api/upload", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    assert status == 413


def test_a_checkpoint_that_asks_for_remote_code_is_refused_and_its_code_never_runs(tmp_path, tiny_dir):
    """A folder whose config points at its own Python (auto_map): loading it must fail, and that Python must
    never be imported (it would write a marker file)."""
    import json
    import shutil

    from krishna_ai.core.errors import ModelUnavailable
    from krishna_ai.runtime.load import load_engine

    evil = tmp_path / "evil"
    shutil.copytree(tiny_dir, evil)
    marker = tmp_path / "code-ran"
    (evil / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    config = json.loads((evil / "config.json").read_text())
    config.update(model_type="evil_remote", auto_map={"AutoConfig": "modeling_evil.EvilConfig",
                                                      "AutoModelForCausalLM": "modeling_evil.EvilModel"})
    (evil / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelUnavailable, match="cannot read config.json"):
        load_engine(str(evil))
    assert not marker.exists()


def test_pickled_weights_are_never_loaded(tmp_path, tiny_dir):
    import shutil

    import torch

    from krishna_ai.core.errors import ModelUnavailable
    from krishna_ai.runtime.load import load_engine

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_dir, pickled, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    torch.save({"x": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(ModelUnavailable, match="no \\*.safetensors weights .*pytorch_model.bin.*never pickled"):
        load_engine(str(pickled))
