"""Faults: errors mid-stream, clients that go away, training killed with SIGKILL, merges cut short."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from gradio_client import Client
from safetensors.torch import load_file

from krishna_ai.core.personas import load_personas
from krishna_ai.studio.service import Studio
from krishna_ai.studio.ui import build_demo
from tests.conftest import REPO, fail_forward_on_call, serve

pytestmark = pytest.mark.slow


def launch(studio: Studio) -> tuple[object, Client]:
    demo = build_demo(studio)
    return demo, serve(demo)[1]


def generate_threads() -> int:
    return sum(t.name == "krishna-generate" and t.is_alive() for t in threading.enumerate())


def test_exception_mid_stream_reaches_the_user_and_the_next_request_works(light_engine, monkeypatch):
    demo, client = launch(Studio(load_personas(), loader=lambda spec, adapter: light_engine))
    try:
        fail_forward_on_call(light_engine.loaded.model, monkeypatch, 4, "simulated fault in generate")
        job = client.submit("Tell me about the Peshwas.", "aurora", None, 0.0, None, None, 40, api_name="/chat")
        with pytest.raises(Exception, match="simulated fault in generate"):
            job.result(timeout=120)
        monkeypatch.undo()
        assert client.predict("Who was Tukaram?", "aurora", None, 0.0, None, None, 4, api_name="/chat").strip()
        assert generate_threads() == 0
    finally:
        demo.close()


def test_a_client_that_goes_away_stops_its_generation(light_engine):
    demo, client = launch(Studio(load_personas(), loader=lambda spec, adapter: light_engine))
    try:
        job = client.submit("Tell me the whole history of the Maratha forts.", "aurora", None, 0.0, None, None, 400,
                            api_name="/chat")
        deadline = time.time() + 120
        while generate_threads() == 0 and time.time() < deadline:
            time.sleep(0.1)
        assert generate_threads() == 1
        time.sleep(1.0)
        job.cancel()  # what gradio does when the browser tab closes: the event is cancelled
        deadline = time.time() + 10
        while generate_threads() and time.time() < deadline:
            time.sleep(0.1)
        assert generate_threads() == 0, "generation kept running after the client left"
    finally:
        demo.close()


def test_training_killed_with_sigkill_resumes_to_the_same_result(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                                     {"role": "assistant", "content": f"Partha, answer {i}."}]})
                            + "\n" for i in range(8)))

    def recipe(out):
        path = tmp_path / f"{out}.yaml"
        path.write_text(f"model: light\ndata: {data}\noutput_dir: {tmp_path / out}\nmax_steps: 8\nbatch_size: 2\n"
                        "grad_accum: 1\nsave_steps: 2\nlearning_rate: 1.0e-3\ngradient_checkpointing: false\n"
                        "lora: {r: 4, alpha: 8}\nseed: 3\n")
        return str(path)

    cmd = [sys.executable, "-m", "krishna_ai", "train", "--config"]
    subprocess.run(cmd + [recipe("full")], cwd=REPO, check=True, capture_output=True)

    proc = subprocess.Popen(cmd + [recipe("killed")], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "checkpoint-4").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "adapter").exists(), "the run finished before it could be killed"
    subprocess.run(cmd + [recipe("killed"), "--resume"], cwd=REPO, check=True, capture_output=True)

    a = load_file(str(tmp_path / "full" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "adapter" / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_merge_cut_short_leaves_no_complete_looking_folder(tmp_path, monkeypatch):
    from krishna_ai.core.errors import ModelUnavailable
    from krishna_ai.runtime import merge as merge_mod

    out = tmp_path / "merged"

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C halfway

    monkeypatch.setattr("krishna_ai.runtime.weights.merge_adapter", boom)
    with pytest.raises(KeyboardInterrupt):
        merge_mod.merge("light", REPO / "adapters" / "krishna-light", out)
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(ModelUnavailable):
        merge_mod.merge("light", tmp_path / "no-adapter", out)
    assert not out.exists()
    assert os.listdir(tmp_path) == []
