"""The sweep end to end on a tiny text-only Gemma 3n: real train + evaluate per trial, failures, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
import yaml

from krishna_ai.cli.main import main as cli
from krishna_ai.core.errors import ConfigError
from krishna_ai.training.config import TrainConfig
from krishna_ai.training.search_space import apply_params, parse_space
from krishna_ai.training.sweep import SweepSettings, default_questions, run_sweep

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ROWS = [
    ("What is courage?", "Partha, courage is acting while your knees shake."),
    ("How do I rest?", "Partha, rest is the pause between two breaths of duty."),
    ("Why do I fail?", "Partha, failure is the teacher that never lies."),
]




@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    from krishna_ai.training.tiny import build_tiny_gemma3n

    return build_tiny_gemma3n(tmp_path_factory.mktemp("tiny") / "text", text_only=True, layers=5, seed=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweepdata")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in ROWS))
    questions = root / "heldout.jsonl"
    questions.write_text("".join(json.dumps({"question": q}) + "\n" for q in ["I lost my job.", "I feel stuck."]))
    return data, questions


def write_recipe(path, tiny, data, searchable):
    recipe = {"model": str(tiny), "data": str(data), "data_format": "messages", "persona": "krishna",
              "output_dir": "unused", "max_steps": 2, "batch_size": 1, "grad_accum": 1, "save_steps": 1,
              "gradient_checkpointing": False, "max_seq_length": 128, "lora": {"r": 4, "alpha": 8},
              "searchable": searchable}
    path.write_text("# python -m krishna_ai train --config recipe.yaml\n" + yaml.safe_dump(recipe, sort_keys=False))
    return path


def settings(recipe, root, trials, **kw):
    return SweepSettings(config=recipe, trials=trials, root=root, max_new_tokens=3, eval_limit=2, progress=False,
                         **kw)


def read_csv(folder):
    with (folder / "trials.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_sweep_writes_reports_prunes_adapters_and_resumes(tiny_text, files, tmp_path, monkeypatch):
    data, questions = files
    monkeypatch.chdir(tmp_path)  # best.yaml's first line names its path relative to the working folder
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_text, data, {"lora.r": [2, 4]})
    result = run_sweep(settings(recipe, tmp_path / "sweeps", 2, questions=questions))
    folder = tmp_path / "sweeps" / "recipe"
    assert result["metric"] == "compliance" and result["finished"] == 2
    rows = read_csv(folder)
    assert [r["number"] for r in rows] == ["0", "1"] and {r["state"] for r in rows} == {"COMPLETE"}
    assert list(rows[0]) == ["number", "state", "learning_rate", "lora.r", "value", "compliance", "accuracy",
                             "train_loss", "seconds", "error"]
    assert all(float(r["value"]) == float(r["compliance"]) and r["error"] == "" for r in rows)
    md = (folder / "trials.md").read_text()
    assert md.count("| COMPLETE |") == 2 and "| number | state | learning_rate | lora.r |" in md
    # trials keep their logs and evaluation, not their adapters or checkpoints
    for n in (0, 1):
        trial = folder / "trials" / f"trial-{n:03d}"
        assert (trial / "eval.json").is_file() and (trial / "train_summary.json").is_file()
        assert not (trial / "adapter").exists() and not list(trial.glob("checkpoint-*"))
    best = (folder / "best.yaml").read_text()
    assert best.startswith("# python -m krishna_ai train --config sweeps/recipe/best.yaml\n")
    raw = yaml.safe_load(best)
    assert "searchable" not in raw and raw["lora"]["r"] in (2, 4) and raw["lora"]["alpha"] == 2 * raw["lora"]["r"]
    TrainConfig.from_dict(raw, source="best.yaml")
    assert (folder / "parallel_coordinates.png").stat().st_size > 5000
    assert "plotly" in (folder / "parallel_coordinates.html").read_text()[:5000].lower()

    # resume: asking for 3 runs only one more, with fresh values (not a replay of trial 0)
    assert cli(["sweep", "--config", str(recipe), "--trials", "3", "--root", str(tmp_path / "sweeps"),
                "--questions", str(questions), "--max-new-tokens", "3", "--eval-limit", "2"]) == 0
    rows = read_csv(folder)
    assert [r["number"] for r in rows] == ["0", "1", "2"] and rows[2]["state"] == "COMPLETE"
    assert rows[2]["learning_rate"] not in (rows[0]["learning_rate"], rows[1]["learning_rate"])
    assert run_sweep(settings(recipe, tmp_path / "sweeps", 3, questions=questions))["finished"] == 3
    assert len(read_csv(folder)) == 3


def test_best_yaml_is_the_trial_with_the_best_score(tiny_text, files, tmp_path, monkeypatch):
    """Trials are really trained; the score each gets is set here (r=4 scores high, r=2 low) so that which
    trial wins is known, and best.yaml must carry the winner's settings."""
    import krishna_ai.training.evaluate

    real = krishna_ai.training.evaluate.evaluate

    def scored(engine, persona, questions, params, **kw):
        result = real(engine, persona, questions, params, **kw)
        r = json.loads((Path(engine.info.adapter) / "adapter_config.json").read_text())["r"]
        result["compliance"] = {2: 0.1, 4: 0.9}[r]
        return result

    monkeypatch.setattr(krishna_ai.training.evaluate, "evaluate", scored)
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "pick.yaml", tiny_text, data := files[0], {"lora.r": [2, 4]})
    run_sweep(settings(recipe, tmp_path / "sweeps", 4, questions=files[1], seed=1))
    rows = read_csv(tmp_path / "sweeps" / "pick")
    assert {r["lora.r"] for r in rows} == {"2", "4"}, "the sampler should try both ranks in 4 trials"
    best = yaml.safe_load((tmp_path / "sweeps" / "pick" / "best.yaml").read_text())
    assert best["lora"]["r"] == 4 and best["data"] == str(data)


def test_failing_trial_is_recorded_and_the_study_goes_on(tiny_text, files, tmp_path, monkeypatch):
    import krishna_ai.training.run

    data, questions = files
    real_main = krishna_ai.training.run.train
    calls = []

    def flaky_main(cfg, **kw):
        calls.append(cfg.output_dir)
        if len(calls) == 1:
            raise RuntimeError("disk full (injected)")
        return real_main(cfg, **kw)

    monkeypatch.setattr(krishna_ai.training.run, "train", flaky_main)
    recipe = write_recipe(tmp_path / "flaky.yaml", tiny_text, data, {"lora.r": [4]})
    run_sweep(settings(recipe, tmp_path, 2, questions=questions, keep_adapters=True))
    rows = read_csv(tmp_path / "flaky")
    assert [r["state"] for r in rows] == ["FAIL", "COMPLETE"]
    assert rows[0]["error"] == "RuntimeError: disk full (injected)" and rows[0]["value"] == ""
    assert (tmp_path / "flaky" / "trials" / "trial-001" / "adapter" / "adapter_model.safetensors").is_file()
    assert "| FAIL |" in (tmp_path / "flaky" / "trials.md").read_text()


def test_invalid_value_and_interrupted_trial(tiny_text, files, tmp_path):
    data, questions = files
    recipe = write_recipe(tmp_path / "bad.yaml", tiny_text, data, {"lora.dropout": [1.5]})
    # a trial left running by a killed process: marked failed (interrupted) and not counted
    storage = f"sqlite:///{tmp_path / 'bad' / 'study.db'}"
    (tmp_path / "bad").mkdir()
    optuna.create_study(study_name="bad", storage=storage, direction="maximize").ask()
    result = run_sweep(settings(recipe, tmp_path, 1, questions=questions))
    rows = read_csv(tmp_path / "bad")
    assert [r["state"] for r in rows] == ["FAIL", "FAIL"] and result["finished"] == 1
    assert rows[0]["error"].startswith("interrupted")
    assert "lora.dropout: must be in [0, 1), got 1.5" in rows[1]["error"]
    assert not (tmp_path / "bad" / "best.yaml").exists()


def test_space_validation_reports_every_problem():
    with pytest.raises(ConfigError) as exc:
        parse_space({"lora.rank": [8], "learnig_rate": {"low": 1e-5, "high": 1e-3},
                     "warmup_steps": {"low": 5, "high": 1}, "engine": {"low": 0, "high": 1},
                     "lora.targets": [["q", "v"]], "weight_decay": {"low": 0.0, "high": 0.1, "log": True},
                     "output_dir": ["a"], "epochs": 3})
    msg = str(exc.value)
    assert "8 problem(s)" in msg
    for part in ("searchable.lora.rank: unknown setting", "searchable.learnig_rate: unknown setting",
                 "searchable.warmup_steps: low must be below high",
                 "searchable.engine: a range needs a numeric setting",
                 "searchable.lora.targets: a list of choices must be non-empty and hold plain values",
                 "searchable.weight_decay: a log range needs low > 0", "searchable.output_dir: a setting that cannot",
                 "searchable.epochs: must be {low, high[, log][, step]} or a list"):
        assert part in msg, part


def test_space_defaults_and_overrides():
    dims = {d.name: d for d in parse_space({"lora.r": [4, 8], "warmup_steps": {"low": 0, "high": 10}})}
    assert set(dims) == {"learning_rate", "lora.r", "epochs", "warmup_steps"}
    assert dims["learning_rate"].log and dims["warmup_steps"].kind == "int" and dims["lora.r"].choices == (4, 8)
    assert "epochs" not in {d.name for d in parse_space(None, max_steps=60)}  # max_steps makes epochs moot
    raw = {"lora": {"r": 16, "alpha": 32}, "learning_rate": 1e-4, "searchable": {"lora.r": [8]}}
    assert apply_params(raw, {"lora.r": 8, "learning_rate": 3e-4}) == {"lora": {"r": 8, "alpha": 16},
                                                                       "learning_rate": 3e-4}
    assert apply_params(raw, {"lora.r": 8, "lora.alpha": 8})["lora"] == {"r": 8, "alpha": 8}


def test_default_questions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "krishna").mkdir(parents=True)
    with pytest.raises(ConfigError, match="pass --questions"):
        default_questions({"data": "elsewhere/train.jsonl"}, "krishna")
    (tmp_path / "data" / "krishna" / "heldout.jsonl").write_text('{"question": "q"}\n')
    assert str(default_questions({"data": "elsewhere/train.jsonl"}, "krishna")) == "data/krishna/heldout.jsonl"
