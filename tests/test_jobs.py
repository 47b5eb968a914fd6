"""The workbench's jobs (studio/jobs.py, studio/workbench.py, history/jobs.py): a form's values checked with
errors that name them; a real training run in its own process stopped at a checkpoint, resumed to the end and
its adapter offered; jobs a killed app left running marked interrupted and resumable; only admins may run
jobs through the API."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from gradio_client import Client

import app
from krishna_ai.core.errors import InputError
from krishna_ai.core.personas import load_personas
from krishna_ai.history import jobs as db
from krishna_ai.history.store import HistoryStore
from krishna_ai.studio import workbench
from krishna_ai.studio.access import ModelPolicy
from krishna_ai.studio.jobs import JobRunner
from krishna_ai.studio.service import Studio
from krishna_ai.studio.train_tab import on_done
from krishna_ai.studio.ui import build_demo
from krishna_ai.training.sft import CHECKPOINT_FILES
from tests.conftest import free_port

P = load_personas()

ROWS = [("What is courage?", "Partha, courage is acting while your knees shake."),
        ("How do I rest?", "Partha, rest is the pause between two breaths of duty."),
        ("Why do I fail?", "Partha, failure is the teacher that never lies, and it speaks once."),
        ("What is patience?", "Partha, patience is the river that carves the stone.")]


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    from krishna_ai.training.tiny import build_tiny_gemma3n

    return build_tiny_gemma3n(tmp_path_factory.mktemp("tiny") / "tiny-text", text_only=True, layers=5)


@pytest.fixture
def store(tmp_path):
    s = HistoryStore(f"sqlite:///{tmp_path / 'history.db'}", data_dir=tmp_path)
    yield s
    s.close()


def test_a_job_form_is_checked_and_every_wrong_value_named():
    with pytest.raises(InputError) as e:
        workbench.plan("train", {"recipe": "../etc/passwd.yaml", "epochs": "many", "rank": 0, "limit": 2.5})
    text = str(e.value)
    assert "recipe: one of" in text and "krishna-light.yaml" in text and "epochs: a number, not 'many'" in text
    assert "rank: between 1 and 1024, not 0" in text and "limit: a whole number, not 2.5" in text
    with pytest.raises(InputError, match="a job is one of train, eval, export, not 'mine'"):
        workbench.plan("mine", {})
    with pytest.raises(InputError) as e:
        workbench.plan("eval", {"persona": "zeus", "models": ["a", "b", "c"], "limit": -1})
    assert "persona: one with held-out questions (" in str(e.value) and "models: one or two" in str(e.value)
    assert "limit: between 1 and 10000" in str(e.value)
    with pytest.raises(InputError) as e:
        workbench.plan("export", {"base": "light", "adapter": "/nowhere", "persona": "krishna",
                                  "targets": ["modelfile", "zip"]})
    assert "adapter folder '/nowhere' does not exist" in str(e.value) and "['zip'] are not among" in str(e.value)
    assert "a Modelfile needs the gguf file" in str(e.value).replace("an Ollama ", "a ")

    with pytest.raises(InputError) as e:
        workbench.plan("export", {"base": "./no-such-model", "adapter": "adapters/krishna-light", "persona": "zeus",
                                  "targets": ["gguf"], "outtype": "q2"})
    assert "base: no model './no-such-model'" in str(e.value) and "persona: one of aurora, krishna" in str(e.value)
    assert "outtype: one of q8_0, f16, bf16, not 'q2'" in str(e.value)
    with pytest.raises(InputError, match=r"models: no model './nowhere'"):
        workbench.plan("eval", {"persona": "krishna", "models": ["./nowhere", "light-gguf@none"]})
    with pytest.raises(InputError, match="epochs: between 0.01 and 100, not inf"):
        workbench.plan("train", {"recipe": "krishna-light.yaml", "epochs": float("inf")})

    plan = workbench.plan("train", {"recipe": "krishna-light.yaml", "max_steps": 2, "rank": 8, "save_steps": 1})
    assert plan.params["method"] == "sft" and plan.title.endswith("r8 · lr 0.0004 · 2 steps")
    plan = workbench.plan("eval", {"persona": "krishna", "models": ["light-gguf", "light-gguf@none"], "limit": 3})
    assert plan.title == "krishna · light-gguf vs light-gguf@none · 3 questions"


def test_a_training_job_stops_at_a_checkpoint_resumes_and_its_adapter_is_offered(tmp_path, store, monkeypatch,
                                                                                    tiny_text):
    """A real `python -m krishna_ai train` in the job's own process on a tiny Gemma 3n: Stop (SIGTERM) ends it at
    a saved checkpoint ("stopped", resumable), Resume continues from that step to the end ("done"), the log keeps
    both runs, and the finished adapter joins the model boxes."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n" for q, a in ROWS))
    recipes = tmp_path / "configs"
    recipes.mkdir()
    (recipes / "tiny.yaml").write_text(yaml.safe_dump({
        "model": str(tiny_text), "data": str(data), "output_dir": "ignored", "max_steps": 40, "batch_size": 1,
        "grad_accum": 1, "learning_rate": 5e-3, "dtype": "fp32", "save_steps": 5, "gradient_checkpointing": False,
        "seed": 7, "lora": {"r": 4, "alpha": 8, "trainable_tokens": []}}))
    monkeypatch.setattr(workbench, "RECIPES", recipes)
    studio = Studio(P, default_model="light", loader=lambda s, a: None, policy=ModelPolicy([]), store=store)
    runner = JobRunner(store, tmp_path / "jobs", threads=1, grace=60)
    runner.on_done.append(on_done(studio))
    runner.start()
    try:
        job = runner.submit("ana", "train", {"recipe": "tiny.yaml", "save_steps": 1})
        assert job.status == "queued" and job.params["save_steps"] == 1
        run = Path(job.folder) / "run"
        assert yaml.safe_load((Path(job.folder) / "recipe.yaml").read_text())["output_dir"] == str(run)
        progress = _wait(lambda: runner.progress(db.job(store, job.id)), lambda p: p["step"] >= 1, 180)
        assert progress["max_steps"] == 40 and progress["steps"][0]["loss"] > 0
        runner.stop(job.id)
        stopped = _wait(lambda: db.job(store, job.id), lambda j: j.ended, 120)
        assert stopped.status == "stopped" and stopped.resume, stopped.error
        at = runner.progress(stopped)["step"]
        assert 1 <= at < 40 and (run / f"checkpoint-{at}").is_dir() and not (run / "adapter").exists()
        assert "stopped at step" in runner.progress(stopped)["log"]

        runner.resume(job.id)
        done = _wait(lambda: db.job(store, job.id), lambda j: j.ended, 300)
        assert done.status == "done", done.error
        rows = runner.progress(done)["steps"]
        assert [r["step"] for r in rows] == list(range(1, 41))  # the log keeps no step twice
        assert (run / "adapter" / "adapter_model.safetensors").is_file()
        assert done.result["adapter"] == str(run / "adapter") and done.result["summary"]["steps"] == 40
        log = (Path(job.folder) / "job.log").read_text()
        assert log.count("$ python -m krishna_ai train --config") == 2 and "--resume" in log
        spec = f"{tiny_text}@{run / 'adapter'}"
        assert spec in studio.trained and spec in studio.policy.allowed
        with pytest.raises(InputError, match="cannot be resumed"):
            runner.resume(job.id)
    finally:
        runner.close()


def test_jobs_a_killed_app_left_running_are_interrupted_and_a_training_run_resumable(tmp_path, store):
    """A restarted app marks what was running "interrupted" (a queued job stays queued); a training run with a
    checkpoint can be resumed, but not while its old process is still there (still saving that checkpoint)."""
    train = db.add_job(store, "ana", "train", "t", {"method": "sft"}, [["train", "--config", "x"]],
                       str(tmp_path / "t"))
    ev = db.add_job(store, "ana", "eval", "e", {}, [["eval"]], str(tmp_path / "e"))
    queued = db.add_job(store, "ana", "eval", "q", {}, [["eval"]], str(tmp_path / "q"))
    assert db.claim_next(store).id == train.id and db.claim_next(store).id == ev.id
    checkpoint = tmp_path / "t" / "run" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    for name in (*CHECKPOINT_FILES, "rng_state.pth"):
        (checkpoint / name).write_bytes(b"x")
    # the old training process, still alive (it ignores the SIGTERM the new app sends, as one saving would)
    old = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                            "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)", "krishna_ai"],
                           start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert old.stdout.readline().strip() == "ready"
    db.set_pid(store, train.id, old.pid)
    with pytest.raises(db.JobChanged, match="is running now"):
        db.finish(store, train.id, "stopped", expect=("queued",))

    runner = JobRunner(store, tmp_path / "jobs")
    runner._work = lambda: None  # take nothing from the queue here
    try:
        left = runner.start()
        assert {j.id for j in left} == {train.id, ev.id}
        train, ev = db.job(store, train.id), db.job(store, ev.id)
        assert train.status == ev.status == "interrupted" and train.pid == old.pid
        assert workbench.resumable(train) and not workbench.resumable(ev)
        assert db.job(store, queued.id).status == "queued"  # a queue survives a restart
        with pytest.raises(InputError, match="still saving its checkpoint"):
            runner.resume(train.id)
    finally:
        old.kill()
        old.wait()
    with pytest.raises(InputError, match="cannot be resumed"):
        runner.resume(ev.id)
    assert runner.resume(train.id).status == "queued" and db.job(store, train.id).resume
    assert runner.stop(queued.id).status == "stopped"
    with pytest.raises(InputError, match="only a queued or running job can be stopped"):
        runner.stop(queued.id)


def test_only_admins_may_see_or_start_jobs_through_the_api(tmp_path, store):
    creds = tmp_path / "logins.txt"
    creds.write_text("ana:pw-ana\nben:pw-ben\n")
    args = app.parse_args(["--port", str(free_port()), "--no-preload", "--model", "light", "--auth-file", str(creds),
                           "--admin", "ana"])
    runner = JobRunner(store, tmp_path / "jobs")  # not started: jobs stay queued
    studio = Studio(P, default_model="light", loader=lambda s, a: None, policy=ModelPolicy(["light"]), store=store,
                    admins=app.admins(args), jobs=runner)
    demo = build_demo(studio)
    app.launch(demo, args, prevent_thread_lock=True, quiet=True, store=store, studio=studio)
    try:
        url = f"http://127.0.0.1:{args.port}/"
        ben = Client(url, auth=("ben", "pw-ben"), verbose=False)
        for call in (lambda: ben.predict("", api_name="/jobs"),
                     lambda: ben.predict("eval", {"persona": "krishna", "models": ["light"]}, api_name="/job_start")):
            with pytest.raises(Exception, match="only the app's admins"):
                call()
        assert db.jobs(store) == []
        ana = Client(url, auth=("ana", "pw-ana"), verbose=False)
        with pytest.raises(Exception, match="models: one or two model specs"):
            ana.predict("eval", {"persona": "krishna", "models": []}, api_name="/job_start")
        job = ana.predict("eval", {"persona": "krishna", "models": ["light"], "limit": 2}, api_name="/job_start")
        assert job["status"] == "queued" and job["user"] == "ana"
        assert job["commands"][0].startswith("python -m krishna_ai eval --persona krishna --questions")
        with pytest.raises(Exception, match="only the app's admins"):
            ben.predict(job["id"], api_name="/job_stop")
        assert [j["id"] for j in ana.predict("eval", api_name="/jobs")] == [job["id"]]
        assert ana.predict(job["id"], api_name="/job_stop")["status"] == "stopped"
        assert ana.predict(job["id"], api_name="/job")["progress"]["commands"] == 1
    finally:
        demo.close()


def _wait(read, ok, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting; last: {value}")
        time.sleep(0.1)
