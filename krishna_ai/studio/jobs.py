"""Runs the workbench's jobs (Train, Evaluate, Export tabs; /job_start): one at a time, in their own process.

    runner = JobRunner(store, data_dir / "jobs")
    runner.start()                                # marks jobs a previous app left running "interrupted"
    job = runner.submit("asha", "train", params)  # queued; workbench.py checks params and builds the commands
    runner.stop(job.id); runner.resume(job.id)    # stop saves a checkpoint; resume continues from it

Each job is a list of `python -m krishna_ai …` commands run in order in its folder's process, with its
output appended to `job.log`. The process runs below the app (SCHED_IDLE, else nice 19) with one thread fewer than
the machine has (at least one), so the chat keeps working (slower: bench/jobs.py) while a model trains.
Stop sends SIGTERM: a training run finishes its step, saves a checkpoint and exits (training/common.py:
StopOnSignal); anything else ends at once; a process still there after `grace` seconds is killed.
A job process also stops itself, the same way, when the app that started it is gone (cli/main.py).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from krishna_ai.core.errors import InputError, KrishnaError
from krishna_ai.history import jobs as db
from krishna_ai.history.jobs import Job, JobChanged
from krishna_ai.history.store import HistoryStore
from krishna_ai.studio import workbench
from krishna_ai.training.common import STOPPED_EXIT

PARENT_ENV = "KRISHNA_AI_JOB_PARENT"
"""Set in a job's process to the app's pid: the job stops itself when its parent is gone."""
LOG = "job.log"
NICE = 19
"""A job's scheduling priority: the lowest, so the app's threads (a reply being generated) come first."""
_PROGRESS = re.compile(r"(\d+)/(\d+) \[")
"""tqdm's "12/40 [" in a job's log: the progress of a step that is not a training run."""


def default_threads() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


class JobRunner:
    """One worker thread taking the oldest queued job from the database and running its commands."""

    def __init__(self, store: HistoryStore, root: Path, *, threads: int | None = None, grace: float = 900.0,
                 python: str = sys.executable, cwd: Path | None = None, prompts: list[str] | None = None):
        self.store = store
        self.prompts = [str(Path(p).resolve()) for p in prompts or []]
        """The server's extra persona folders, passed to every job's commands."""
        self.root = Path(root)
        self.threads = threads or default_threads()
        self.grace = grace
        self.python = python
        self.cwd = cwd or workbench.ROOT
        self.on_done: list[Callable[[Job], None]] = []
        """Called (in the worker thread) after each job that ended "done"."""
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._current: str | None = None
        self._stopping: set[str] = set()
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> list[Job]:
        """Mark the jobs an earlier app left running "interrupted" (a process of theirs still saving its
        checkpoint is told to stop), then start taking jobs. Returns the interrupted jobs."""
        left = db.interrupt_running(self.store)
        for job in left:  # (whether one can be resumed is judged when asked: its checkpoint may be on its way)
            if job.pid and _is_job_process(job.pid):
                _signal(job.pid, signal.SIGTERM)
        self._thread = threading.Thread(target=self._work, name="jobs", daemon=True)
        self._thread.start()
        return left

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; the one running is stopped (a training run saves its checkpoint) and marked
        "interrupted", so the next app can resume it."""
        self._closed.set()
        self._wake.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            _signal(proc.pid, signal.SIGTERM)
        if self._thread is not None:
            self._thread.join(timeout)

    # -- what the tabs and the API call ---------------------------------------------------------
    def submit(self, user: str, kind: str, params: dict[str, Any]) -> Job:
        """Check `params` (InputError names what is wrong) and queue the job."""
        plan = workbench.plan(kind, params, prompts=self.prompts)
        folder = workbench.new_folder(self.root, kind, plan.title)
        commands = plan.commands(folder)
        job = db.add_job(self.store, user, kind, plan.title, plan.params, commands, str(folder))
        self._wake.set()
        return job

    def stop(self, job_id: str) -> Job:
        """A queued job leaves the queue; a running one is asked to stop (see the module's doc)."""
        job = db.job(self.store, job_id)
        if job.status == "queued":
            try:
                return db.finish(self.store, job.id, "stopped", error="stopped before it started", expect=("queued",))
            except JobChanged:  # the queue took it meanwhile: stop it running
                job = db.job(self.store, job.id)
        if job.status != "running":
            raise InputError(f"job {job.id} is {job.status}: only a queued or running job can be stopped")
        with self._lock:
            proc = self._proc if self._current == job.id else None
            self._stopping.add(job.id)
        if proc is not None and proc.poll() is None:
            _signal(proc.pid, signal.SIGTERM)
            threading.Timer(self.grace, _kill_if_alive, (proc,)).start()
        return db.job(self.store, job.id)

    def resume(self, job_id: str) -> Job:
        """Queue a stopped or interrupted training run again, to continue from its last checkpoint."""
        job = db.job(self.store, job_id)
        if job.status not in ("stopped", "interrupted") or not workbench.resumable(job):
            raise InputError(f"job {job.id} ({job.status}) cannot be resumed: only a stopped or interrupted training "
                             "run with a saved checkpoint can")
        if job.pid and _is_job_process(job.pid):
            raise InputError(f"job {job.id}'s process is still saving its checkpoint; try again in a moment")
        with self._lock:
            self._stopping.discard(job.id)  # a Stop that came as the job ended is not this run's
        job = db.finish(self.store, job.id, "queued", resume=True, expect=("stopped", "interrupted"))
        self._wake.set()
        return job

    def progress(self, job: Job) -> dict[str, Any]:
        """What the job has done so far: the training steps logged (rows of loss.jsonl), or the command it is
        on and the progress its log shows; and the log's tail."""
        log = Path(job.folder) / LOG
        tail = _tail(log)
        out: dict[str, Any] = {"log": tail, **workbench.progress(job)}
        current = tail.rsplit("\n$ python -m krishna_ai ", 1)[-1]  # the command under way
        found = _PROGRESS.findall(current.rsplit("\n", 1)[-1]) or _PROGRESS.findall(current[-400:])
        if found and "fraction" not in out:
            done, total = (int(x) for x in found[-1])
            out["fraction"] = done / total if total else None
        return out

    # -- the worker -----------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._closed.is_set():
            try:
                job = db.claim_next(self.store)
                if job is None:
                    self._wake.wait(2.0)
                    self._wake.clear()
                    continue
                try:
                    self._run(job)
                except Exception as exc:  # noqa: BLE001 - a job's failure never ends the worker
                    print(f"job {job.id} failed in the runner: {exc!r}", file=sys.stderr)
                    db.finish(self.store, job.id, "failed", error=f"{type(exc).__name__}: {exc}", expect=("running",))
            except KrishnaError as exc:  # the database is down: try again, the queue is still there
                print(f"jobs: {exc}", file=sys.stderr)
                self._closed.wait(5.0)

    def _run(self, job: Job) -> None:
        folder = Path(job.folder)
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, PARENT_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1",
               "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "TOKENIZERS_PARALLELISM": "false", "KRISHNA_AI_DB": self.store.url,
               "PYTHONPATH": os.pathsep.join([str(workbench.ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        nice = low_priority()
        rc, completed = 0, False
        with (folder / LOG).open("ab") as log:
            for n, argv in enumerate(job.commands, 1):
                if job.resume and n < workbench.resume_from(job):
                    continue
                argv = [*argv, "--resume"] if job.resume and argv[:1] == ["train"] else argv
                log.write(f"\n$ python -m krishna_ai {' '.join(argv)}\n".encode())
                log.flush()
                with self._lock:
                    if job.id in self._stopping or self._closed.is_set():
                        break
                    self._proc = subprocess.Popen([*nice, self.python, "-m", "krishna_ai", *argv], cwd=self.cwd,
                                                  env=env, stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, start_new_session=True)
                    self._current = job.id
                try:
                    db.set_pid(self.store, job.id, self._proc.pid)
                finally:  # never leave a job's process unwatched
                    rc = self._proc.wait()
                if rc != 0:
                    break
            else:
                completed = True
        with self._lock:
            self._proc, self._current = None, None
            stopped = job.id in self._stopping or rc == STOPPED_EXIT
            self._stopping.discard(job.id)
        if completed:
            done = db.finish(self.store, job.id, "done", result=workbench.result(job), resume=False,
                             expect=("running",))
            for hook in self.on_done:
                hook(done)
        elif self._closed.is_set() or stopped:
            status = "interrupted" if self._closed.is_set() else "stopped"
            db.finish(self.store, job.id, status, resume=workbench.resumable(job), expect=("running",),
                      error="the app ended while this job ran" if status == "interrupted" else "stopped by its user")
        else:
            db.finish(self.store, job.id, "failed", error=_failure(folder / LOG, rc), expect=("running",))


@functools.cache
def low_priority() -> list[str]:
    """The command prefix that runs a job below the app: Linux's SCHED_IDLE (`chrt --idle 0`: the job gets a
    core only when no thread of the app wants it), else the lowest nice level, else nothing."""
    chrt = shutil.which("chrt")
    if chrt and subprocess.run([chrt, "--idle", "0", "true"], capture_output=True).returncode == 0:
        return [chrt, "--idle", "0"]  # (where a sandbox forbids it, nice)
    if shutil.which("nice"):
        return [shutil.which("nice") or "nice", "-n", str(NICE)]
    return []


def _signal(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the job's own process group (start_new_session): its children too
    except (ProcessLookupError, PermissionError):
        pass


def _kill_if_alive(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        _signal(proc.pid, signal.SIGKILL)


def _is_job_process(pid: int) -> bool:
    """Whether `pid` is still a krishna_ai job process (not a reused pid of something else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"krishna_ai" in cmdline


def _tail(path: Path, size: int = 6000) -> str:
    """The end of a log, with tqdm's carriage-return redraws reduced to their last state."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - size))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(line.rsplit("\r", 1)[-1] if line.rstrip("\r") else "" for line in text.split("\n"))


def _failure(log: Path, rc: int) -> str:
    """Why a job failed: its `error:` line, else the end of its log."""
    tail = _tail(log).rsplit("\n$ python -m krishna_ai ", 1)[-1].strip().splitlines()  # the last command's
    errors = [line for line in tail if line.startswith("error:")]
    if errors:
        return errors[-1].removeprefix("error:").strip()
    cause = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
    return f"{cause}; the log ends: " + " / ".join(tail[-3:])[-500:]
