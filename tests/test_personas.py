from pathlib import Path

import pytest

from krishna_ai.errors import PersonaError
from krishna_ai.personas import PROMPTS_DIR, get_persona, load_persona, load_personas

# The shipped aurora persona, with its knowledge bank made absolute so the file can be written anywhere.
GOOD = (PROMPTS_DIR / "aurora.toml").read_text().replace(
    'bank = "knowledge/aurora"', f'bank = "{(PROMPTS_DIR / "knowledge" / "aurora").as_posix()}"').replace(
    'adapters = { light = "../adapters/aurora-light" }\n', "")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_personas_load():
    personas = load_personas()
    assert {"krishna", "maize", "aurora", "pet"} <= set(personas)
    k = personas["krishna"]
    assert (k.sampling.temperature, k.sampling.top_p, k.sampling.top_k) == (1.0, 0.95, 64)
    assert k.style.address == "Partha" and "Arjuna" in k.style.forbidden_words
    assert k.personalities and k.knowledge and k.knowledge.checked == "story" and k.examples
    assert personas["maize"].accepts_images and personas["maize"].sampling.temperature == 0.3
    assert personas["aurora"].sampling.temperature == 0.3
    assert not personas["krishna"].accepts_images


def test_unknown_key_names_file_and_field(tmp_path):
    path = write(tmp_path, "aurora", GOOD.replace("[sampling]", "[sampling]\ntemprature = 0.5"))
    with pytest.raises(PersonaError) as exc:
        load_persona(path)
    msg = str(exc.value)
    assert "aurora.toml" in msg and "sampling.temprature" in msg and "unknown key" in msg


def test_all_problems_reported_at_once(tmp_path):
    text = GOOD.replace("temperature = 0.3", "temperature = 7").replace("top_k = 64", "top_k = 'many'")
    text = text.replace('name = "Aurora', 'nme = "Aurora')
    with pytest.raises(PersonaError) as exc:
        load_persona(write(tmp_path, "aurora", text))
    msg = str(exc.value)
    for field in ("sampling.temperature", "sampling.top_k", "nme", "name: required field is missing"):
        assert field in msg, msg


def test_missing_required_field(tmp_path):
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith("system_prompt"))
    with pytest.raises(PersonaError, match=r"aurora.toml: system_prompt: required field is missing"):
        load_persona(write(tmp_path, "aurora", text))


def test_malformed_toml(tmp_path):
    with pytest.raises(PersonaError, match=r"broken.toml: not valid TOML"):
        load_persona(write(tmp_path, "broken", 'id = "broken"\nname = '))


def test_id_must_match_file_name(tmp_path):
    with pytest.raises(PersonaError, match=r"other.toml: id: is 'aurora'"):
        load_persona(write(tmp_path, "other", GOOD))


def test_bad_story_template_variable(tmp_path):
    text = 'story_template = "Tell a story about $hero"\npersonalities = ["X"]\n' + GOOD
    with pytest.raises(PersonaError, match=r"story_template: .*unknown template variable.*hero"):
        load_persona(write(tmp_path, "aurora", text))


def test_bad_regex_and_sentence_range(tmp_path):
    text = GOOD.replace("sentences = [2, 6]", "sentences = [5, 2]")
    text += '\n[[style.require]]\nname = "x"\npattern = "(unclosed"\n'
    with pytest.raises(PersonaError) as exc:
        load_persona(write(tmp_path, "aurora", text))
    msg = str(exc.value)
    assert "style.sentences" in msg and "style.require.0.pattern" in msg


def test_user_folder_adds_and_overrides(tmp_path):
    write(tmp_path, "aurora", GOOD.replace("temperature = 0.3", "temperature = 0.9"))
    write(tmp_path, "sage", GOOD.replace('id = "aurora"', 'id = "sage"'))
    personas = load_personas([PROMPTS_DIR, tmp_path])
    assert personas["aurora"].sampling.temperature == 0.9
    assert "sage" in personas and "krishna" in personas


def test_folder_errors_collected(tmp_path):
    write(tmp_path, "a", "garbage = [")
    write(tmp_path, "b", 'id = "b"')
    with pytest.raises(PersonaError) as exc:
        load_personas([tmp_path, tmp_path / "missing"])
    msg = str(exc.value)
    assert "a.toml" in msg and "b.toml" in msg and "does not exist" in msg


def test_unknown_persona_lists_known():
    with pytest.raises(PersonaError, match="unknown persona 'zeus'; available: aurora, krishna"):
        get_persona(load_personas(), "zeus")


def test_personality_choice():
    import random

    k = load_personas()["krishna"]
    assert k.pick_personality("anything", "Serena Williams") == "Serena Williams"
    assert k.pick_personality("tell me about marie curie please") == "Marie Curie"
    assert k.pick_personality("hello", rng=random.Random(0)) in k.personalities
    assert k.story_instruction("Marie Curie") is None  # Krishna's story comes from its knowledge bank


def test_persona_adapters_resolve_relative_to_the_file(tmp_path):
    (tmp_path / "adapters" / "mine").mkdir(parents=True)
    folder = tmp_path / "prompts"
    folder.mkdir()
    text = 'adapters = { light = "../adapters/mine" }\n' + GOOD
    persona = load_persona(write(folder, "aurora", text))
    assert persona.adapters == {"light": str((tmp_path / "adapters" / "mine").resolve())}
    with pytest.raises(PersonaError, match=r"adapters.e2b: .*does not exist"):
        load_persona(write(folder, "aurora", 'adapters = { e2b = "../nowhere" }\n' + GOOD))
