"""The tuned matcher (training/matcher.py): a LoRA on the questions' side of the sentence model, fitted on a
bank's examples, written whole or not at all, loaded by the persona that names it, with clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from krishna_ai.core.errors import ModelUnavailable, PersonaError
from krishna_ai.core.knowledge import load_bank
from krishna_ai.core.personas import load_persona, load_personas
from krishna_ai.core.vectors import MODEL_NAME, sentence_vectors
from krishna_ai.training import matcher
from tests.conftest import REPO, shipped_persona

# Three situations whose troubles share words across cards (a plain model mixes them up: "brother" and "money"
# are in two cards each), four examples each.
CARDS = {
    "envied": ("Being envied by a brother", "family", [
        "My brother is jealous that I earn more money than him.",
        "Since my promotion my sister will not speak to me, she resents my success.",
        "My cousin mocks my new car at every family dinner because he envies it.",
        "My younger brother sulks whenever our parents praise my job."]),
    "envying": ("Envying a brother who earns more", "envy", [
        "My brother earns far more money than me and I cannot stop resenting him.",
        "I feel bitter when my sister shows her new house, I wish I had her life.",
        "Every time my cousin posts his holiday photos I feel small and jealous.",
        "My younger brother got the job I wanted and I hate myself for being angry at him."]),
    "debt": ("Money owed to a brother", "money", [
        "I borrowed money from my brother two years ago and still cannot pay him back.",
        "I owe my sister a loan and she keeps asking for it at family dinners.",
        "My cousin lent me money for my car and I keep avoiding his calls.",
        "I am ashamed that I still owe my younger brother the rent he covered for me."]),
}


def write_bank(folder, cards=CARDS):
    folder.mkdir(parents=True, exist_ok=True)
    blocks = []
    for card_id, (title, theme, examples) in cards.items():
        blocks.append(f'[[cards]]\nid = "{card_id}"\ntitle = "{title}"\nthemes = ["{theme}"]\n'
                      f'text = "Partha, {title.lower()} is a trouble many carry; act without clinging to the fruit."\n'
                      f'source = "Bhagavad Gita 2.47"\nexamples = {json.dumps(examples)}\n')
    (folder / "cards.toml").write_text("\n".join(blocks), encoding="utf-8")
    return load_bank(folder)


def own_card_margin(bank, texts_and_owners, matcher_folder=None) -> float:
    """Mean of (own card's score - best other card's score), with the app's score (Bank.similarity)."""
    margins = []
    for text, owner in texts_and_owners:
        scores = np.asarray(bank.similarity(text, matcher_folder))
        margins.append(scores[owner] - np.delete(scores, owner).max())
    return float(np.mean(margins))


def test_a_fitted_matcher_is_written_whole_and_pulls_each_trouble_toward_its_own_card(tmp_path):
    bank = write_bank(tmp_path / "bank")
    out = tmp_path / "matcher"
    fitted = matcher.fit_matcher(bank, out, matcher.Settings(epochs=8, held_per_card=1, learning_rate=3e-3),
                                 progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                     "matcher.json"]
    about = json.loads((out / "matcher.json").read_text(encoding="utf-8"))
    assert about["model"] == MODEL_NAME and about["fingerprint"] == bank.fingerprint and about["cards"] == 3
    assert about["trained_on"] == 9 and about["held_back"] == 3 and fitted.trained_on == 9
    assert set(about["plain"]) == set(about["tuned"]) == {"own card", "topic"}
    config = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["base_model_name_or_path"] == MODEL_NAME  # no path of the machine it was fitted on
    assert not list(tmp_path.glob("*.partial-*"))

    tuned = sentence_vectors(["My brother earns more than me."], matcher=str(out))
    plain = sentence_vectors(["My brother earns more than me."])
    assert np.allclose(np.linalg.norm(tuned, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(tuned, plain, atol=1e-3)  # the LoRA is merged in, not ignored
    # the troubles it was trained on score their own card further ahead of the others than before
    trained = [(e, i) for i, c in enumerate(bank.cards) for e in c.examples]
    assert own_card_margin(bank, trained, str(out)) > own_card_margin(bank, trained) + 0.02


def test_a_failed_fit_leaves_no_matcher_behind(tmp_path, monkeypatch):
    bank = write_bank(tmp_path / "bank")
    out = tmp_path / "matcher"
    calls = []

    def measure_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # after training, before anything is written
            raise RuntimeError("interrupted")
        return {"own card": 0.0, "topic": 0.0}

    monkeypatch.setattr(matcher, "measure", measure_then_fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        matcher.fit_matcher(bank, out, matcher.Settings(epochs=1), progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "bank"]


def test_a_bank_without_enough_examples_is_refused_by_name(tmp_path):
    bank = write_bank(tmp_path / "thin", {k: (t, th, ex[:1]) for k, (t, th, ex) in CARDS.items()})
    with pytest.raises(PersonaError, match=r"thin: a matcher needs at least 2 cards with 2 examples each.*3 cards "
                                           r"and 3 examples"):
        matcher.fit_matcher(bank, tmp_path / "out", matcher.Settings(), progress=False)
    assert not (tmp_path / "out").exists()


def persona_file(tmp_path, counsel_extra: str):
    """The shipped Krishna with a [counsel] bank of CARDS beside it and `counsel_extra` in that table."""
    write_bank(tmp_path / "knowledge" / "counsel")
    path = tmp_path / "krishna.toml"
    path.write_text(shipped_persona("krishna", adapters=False, counsel=False) +
                    f'\n[counsel]\nbank = "knowledge/counsel"\nwritten = true\n{counsel_extra}\n', encoding="utf-8")
    return path


def test_a_persona_naming_a_missing_or_broken_matcher_fails_by_name(tmp_path):
    path = persona_file(tmp_path, 'vectors = true\nmatcher = "tuned"')
    with pytest.raises(PersonaError, match=r"counsel\.matcher: tuned is not a matcher \(no adapter_config\.json"):
        load_persona(path)
    assert load_persona(path, check_gate=False).counsel.matcher == str(tmp_path / "tuned")  # what `fit` loads
    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned" / "adapter_config.json").write_text("{not json", encoding="utf-8")
    persona = load_persona(path)
    with pytest.raises(ModelUnavailable, match=r"tuned: the matcher does not load"):
        sentence_vectors(["a trouble"], matcher=persona.counsel.matcher)
    with pytest.raises(PersonaError, match=r"matcher tunes the ranking by meaning, so it needs vectors = true"):
        load_persona(persona_file(tmp_path, 'matcher = "tuned"'))
    with pytest.raises(PersonaError, match=r"krishna\.toml: no \[counsel\] matcher to fit"):
        matcher.fit_persona(persona_file(tmp_path, "vectors = true"))


def test_the_shipped_persona_chooses_its_counsel_with_its_tuned_matcher():
    from krishna_ai.core.grounding import teachings_for

    counsel = load_personas()["krishna"].counsel
    assert counsel.matcher and (REPO / "adapters" / "krishna-matcher" / "matcher.json").is_file()
    about = json.loads((REPO / "adapters" / "krishna-matcher" / "matcher.json").read_text(encoding="utf-8"))
    assert about["tuned"]["own card"] > about["plain"]["own card"]
    bank = load_bank(counsel.bank)
    question = "My brother got engaged before me and everyone keeps asking when my turn is."
    scores = np.asarray(bank.similarity(question, counsel.matcher))
    assert not np.allclose(scores, np.asarray(bank.similarity(question)))
    chosen = teachings_for(load_personas()["krishna"], question)
    assert chosen and chosen[0].id in {c.id for c in bank.cards}


def test_the_command_refuses_bad_settings_and_a_persona_without_a_matcher(tmp_path, capsys):
    from krishna_ai.cli.main import main

    with pytest.raises(SystemExit, match="--epochs and --rank must be at least 1"):
        main(["matcher", "fit", "--epochs", "0"])
    assert main(["matcher", "fit", str(persona_file(tmp_path, "vectors = true"))]) != 0
    assert "no [counsel] matcher to fit" in capsys.readouterr().err
