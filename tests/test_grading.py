"""Blind grading: the sheet hides which model wrote which reply, keeps the same questions for every model,
and the summary counts each model's grades from the key."""

from __future__ import annotations

import json

import pytest

from krishna_ai.cli.main import main as cli
from krishna_ai.core.errors import DataError
from krishna_ai.training.grading import eval_files, grade, key_path, prepare, rubric_for, summary


def eval_file(path, name, replies):
    path.write_text(json.dumps({"persona": "krishna", "models": [
        {"name": name, "replies": [{"question": q, "reply": r} for q, r in replies]}]}))
    return path


def test_sheet_is_blind_shuffled_and_summarised_per_model(tmp_path):
    a = eval_file(tmp_path / "a.json", "light-gguf", [("q1", "A one"), ("q2", "A two"), ("q3", "A three")])
    b = eval_file(tmp_path / "b.json", "light-gguf", [("q2", "B two"), ("q1", "B one")])  # no q3: left out
    rubric = tmp_path / "rubric.md"
    rubric.write_text("good: coherent, on the question, useful\n")
    sheet, key = prepare([a, b], rubric, tmp_path / "sheet.json", seed=3)
    data = json.loads(sheet.read_text())
    assert data["rubric"].startswith("good:") and len(data["replies"]) == 4
    assert {r["question"] for r in data["replies"]} == {"q1", "q2"}
    assert "light-gguf" not in sheet.read_text() and "a.json" not in sheet.read_text()
    owners = json.loads(key.read_text())
    assert sorted(owners.values()) == ["a.json:light-gguf"] * 2 + ["b.json:light-gguf"] * 2
    with pytest.raises(DataError, match="4 of 4 replies are not graded"):
        summary(sheet)
    for row in data["replies"]:
        row["grade"] = "good" if row["reply"].startswith("A") else "bad"
    sheet.write_text(json.dumps(data))
    result = summary(sheet)
    assert result["a.json:light-gguf"]["good_share"] == 1.0 and result["b.json:light-gguf"]["bad"] == 2


def test_bad_grades_and_the_cli(tmp_path, capsys):
    a = eval_file(tmp_path / "a.json", "m", [("q1", "one"), ("q2", "two")])
    rubric = tmp_path / "r.md"
    rubric.write_text("rubric")
    assert cli(["grade", "prepare", "--eval", str(a), "--rubric", str(rubric), "--out", str(tmp_path / "s.json")]) == 0
    assert key_path(tmp_path / "s.json").is_file()
    data = json.loads((tmp_path / "s.json").read_text())
    data["replies"][0]["grade"] = "great"
    (tmp_path / "s.json").write_text(json.dumps(data))
    assert cli(["grade", "summary", str(tmp_path / "s.json")]) == 2
    assert "must be one of good, weak, bad" in capsys.readouterr().err
    data["replies"][0]["grade"] = "weak"
    (tmp_path / "s.json").write_text(json.dumps(data))
    assert cli(["grade", "summary", str(tmp_path / "s.json"), "--partial"]) == 0
    assert "| a.json:m | 1 | 0 (0%) | 1 (100%) | 0 (0%) |" in capsys.readouterr().out


def test_grades_are_written_one_at_a_time_and_checked(tmp_path):
    """What the Grade tab does per click: one reply's grade and note, written at once (resumable)."""
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a = eval_file(tmp_path / "x" / "eval.json", "m", [("q1", "one"), ("q2", "two")])
    b = eval_file(tmp_path / "y" / "eval.json", "m", [("q1", "uno"), ("q2", "dos")])
    rubric = tmp_path / "r.md"
    rubric.write_text("rubric")
    sheet, key = prepare([a, b], rubric, tmp_path / "s.json")
    assert sorted(set(json.loads(key.read_text()).values())) == ["x/eval.json:m", "y/eval.json:m"]  # told apart
    first = json.loads(sheet.read_text())["replies"][0]["id"]
    assert grade(sheet, first, "weak", "  generic counsel  ")["replies"][0]["note"] == "generic counsel"
    assert json.loads(sheet.read_text())["replies"][0]["grade"] == "weak"  # on disk at once
    assert sum(m["graded"] for m in summary(sheet, partial=True).values()) == 1
    with pytest.raises(DataError, match="one of good, weak, bad"):
        grade(sheet, first, "great")
    with pytest.raises(DataError, match="no reply 'r999'"):
        grade(sheet, "r999", "good")
    (tmp_path / "junk.json").write_text('{"models": [{"replies": []}]}')
    with pytest.raises(DataError, match="junk.json is not an eval result"):
        prepare([tmp_path / "junk.json"], rubric, tmp_path / "t.json")


def test_every_shipped_persona_has_a_rubric_and_its_evals_are_offered():
    from krishna_ai.core.personas import load_personas

    for persona in load_personas().values():
        assert rubric_for(persona.id) is not None, persona.id
        assert eval_files(persona), persona.id  # the eval beside its light adapter
        assert all(f.name.startswith("eval-") and f.suffix == ".json" for f in eval_files(persona))
