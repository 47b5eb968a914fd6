"""Character cards (SillyTavern V2): import as persona files, export personas, and every kind of bad card."""

from __future__ import annotations

import base64
import json

import pytest
from PIL import Image, PngImagePlugin

from krishna_ai.core.errors import PersonaError
from krishna_ai.core.personas import load_persona, load_personas
from krishna_ai.history.cards import MAX_CARD_BYTES, card_to_persona, import_card, read_card, write_card

CARD = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
    "name": "Captain Mira",
    "description": "{{char}} is a retired starship captain who mentors young pilots.",
    "personality": "gruff, warm, precise",
    "scenario": "{{user}} is a cadet asking {{char}} for advice.",
    "first_mes": "So, {{user}}, what's troubling you?",
    "mes_example": "<START>\n{{user}}: How do I land in a storm?\n{{char}}: Slowly, and with respect for the wind.\n"
                   "<START>\n{{user}}: Was the war hard?\n{{char}}: Harder than any landing.",
    "creator_notes": "A mentor for sci-fi roleplay.\nSecond line.",
    "system_prompt": "Write {{char}}'s next reply. {{original}}",
    "post_history_instructions": "Stay in character.\nKeep replies under 80 words.",
    "alternate_greetings": ["Hi cadet."], "character_book": {"entries": [{"keys": ["storm"], "content": "x"}]},
    "tags": ["scifi"], "creator": "someone", "character_version": "1.2", "extensions": {"depth_prompt": {}}}}


def png_with(chunks: dict[str, str], path) -> None:
    info = PngImagePlugin.PngInfo()
    for k, v in chunks.items():
        info.add_text(k, v)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)


def test_a_v2_card_becomes_a_persona_with_everything_mapped(tmp_path):
    card = tmp_path / "mira.json"
    card.write_text(json.dumps(CARD))
    target, imported = import_card(card, tmp_path / "prompts")
    p = load_persona(target)
    assert (p.id, p.name, p.description) == ("captain-mira", "Captain Mira", "A mentor for sci-fi roleplay.")
    assert p.greeting == "So, you, what's troubling you?"
    assert p.system_prompt.startswith("Write Captain Mira's next reply.")
    assert "{{" not in p.system_prompt and "Captain Mira's personality: gruff, warm, precise" in p.system_prompt
    assert "Scenario: the user is a cadet asking Captain Mira for advice." in p.system_prompt
    assert "Captain Mira: Slowly, and with respect for the wind." in p.system_prompt
    assert p.constraints == ["Stay in character.", "Keep replies under 80 words."]
    assert p.examples == ["How do I land in a storm?", "Was the war hard?"]
    said = " ".join(imported.not_carried)
    assert "alternate_greetings (1)" in said and "character_book (1 entries)" in said and "depth_prompt" in said
    assert "# not carried: character_book" in target.read_text()


def test_a_png_card_is_read_from_its_chara_chunk(tmp_path):
    png = tmp_path / "mira.png"
    png_with({"chara": base64.b64encode(json.dumps(CARD).encode()).decode()}, png)
    target, _ = import_card(png, tmp_path / "prompts", "mira")
    assert load_persona(target).name == "Captain Mira" and target.name == "mira.toml"


@pytest.mark.parametrize("persona_id", ["krishna", "pet", "aurora", "maize"])
def test_export_then_import_gives_the_persona_back(tmp_path, persona_id):
    persona = load_personas()[persona_id]
    for suffix in (".json", ".png"):
        card = write_card(persona, tmp_path / f"card{suffix}")
        back = card_to_persona(read_card(card.read_bytes()), persona_id).persona
        assert back.system_prompt.startswith(persona.system_prompt.strip())
        assert (back.name, back.greeting, back.constraints, back.examples, back.sampling) == (
            persona.name, persona.greeting, persona.constraints, persona.examples, persona.sampling)
        assert back.description == persona.description


BAD = {
    "not json": (b"{nope", "not JSON"),
    "a list": (b"[1]", "a JSON object"),
    "another spec": (json.dumps({"spec": "something_else", "data": {}}).encode(), "not a Character Card V2"),
    "v2 without data": (json.dumps({"spec": "chara_card_v2"}).encode(), "without a \"data\" object"),
    "no name": (json.dumps({"spec": "chara_card_v2", "data": {"first_mes": "hi"}}).encode(), "data.name"),
    "wrong types": (json.dumps({"spec": "chara_card_v2", "data": {"name": "X", "tags": "a"}}).encode(), "data.tags"),
    "huge": (b" " * (MAX_CARD_BYTES + 1), "at most 20 MB"),
    "broken png": (b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "broken PNG"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_cards_are_clear_errors(case):
    raw, message = BAD[case]
    with pytest.raises(PersonaError, match=message):
        read_card(raw, "card")


def test_bad_png_cards_and_bad_persona_fields(tmp_path):
    plain = tmp_path / "plain.png"
    png_with({}, plain)
    with pytest.raises(PersonaError, match="no 'chara' text chunk"):
        read_card(plain.read_bytes(), "plain.png")
    junk = tmp_path / "junk.png"
    png_with({"chara": "%%% not base64 %%%"}, junk)
    with pytest.raises(PersonaError, match="not base64"):
        read_card(junk.read_bytes(), "junk.png")
    with pytest.raises(PersonaError, match="pass --id"):
        card_to_persona(read_card(json.dumps({"spec": "chara_card_v2", "data": {"name": "???"}}).encode()))
    hot = {"spec": "chara_card_v2", "data": {"name": "Hot", "extensions": {"krishna_ai": {"sampling":
                                                                                           {"temperature": 9}}}}}
    with pytest.raises(PersonaError, match="sampling.temperature"):
        card_to_persona(read_card(json.dumps(hot).encode()))


def test_an_existing_id_is_not_overwritten_unless_forced(tmp_path):
    card = tmp_path / "k.json"
    card.write_text(json.dumps({"spec": "chara_card_v2", "data": {"name": "Krishna"}}))
    with pytest.raises(PersonaError, match="persona 'krishna' exists already: pass --id"):
        import_card(card, tmp_path / "p", existing={"krishna"})
    assert not (tmp_path / "p" / "krishna.toml").exists()
    target, _ = import_card(card, tmp_path / "p", existing={"krishna"}, force=True)
    assert load_persona(target).name == "Krishna"


def test_cli_import_and_export(tmp_path, capsys):
    from krishna_ai.cli.main import main

    card = tmp_path / "mira.json"
    card.write_text(json.dumps(CARD))
    assert main(["persona", "import", str(card), "--out", str(tmp_path / "p")]) == 0
    assert "not carried: character_book" in capsys.readouterr().err
    assert main(["persona", "export", "captain-mira", "--prompts", str(tmp_path / "p"), "-o",
                 str(tmp_path / "out.png")]) == 0
    assert read_card((tmp_path / "out.png").read_bytes()).name == "Captain Mira"
    assert main(["persona", "export", "pet", "-o", str(tmp_path / "out.txt")]) == 2
    assert "written as .json or .png" in capsys.readouterr().err
    assert not (tmp_path / "out.txt").exists()
    assert main(["persona", "import", str(tmp_path / "missing.json")]) == 2


def test_card_text_cannot_inject_persona_settings_or_break_the_folder(tmp_path):
    card = tmp_path / "evil.json"
    card.write_text(json.dumps({"spec": "chara_card_v2", "data": {
        "name": "Dr \\o/ Evil", "creator": "bob\naccepts_images = true #", "tags": ["x\nlabels = ['a']"],
        "first_mes": "hi {{char}}"}}))
    target, imported = import_card(card, tmp_path / "p", "evil")
    p = load_persona(target)
    assert p.accepts_images is False and p.labels == [] and p.greeting == "hi Dr \\o/ Evil"
    assert load_personas([tmp_path / "p"])["evil"].name == "Dr \\o/ Evil"


def test_a_card_png_too_large_in_pixels_or_in_its_text_chunk_is_a_clear_error(tmp_path):
    import io
    import zlib

    from PIL import Image, PngImagePlugin

    from krishna_ai.core.errors import PersonaError
    from krishna_ai.history.cards import read_card

    def png(size, text_chunks=()):
        info = PngImagePlugin.PngInfo()
        for key, value in text_chunks:
            info.add_itxt(key, value, zip=True)  # a compressed text chunk
        buf = io.BytesIO()
        Image.new("L", size).save(buf, "PNG", pnginfo=info, optimize=False)
        return buf.getvalue()

    with pytest.raises(PersonaError, match="pixels"):
        read_card(png((5000, 4000)), "big.png")  # 20 million pixels, a few kB of PNG
    bomb = "A" * (12 * 2**20)  # compresses to ~12 kB, decompresses past Pillow's 1 MB text limit
    assert len(zlib.compress(bomb.encode())) < 100_000
    with pytest.raises(PersonaError, match="too large to read"):
        read_card(png((8, 8), [("chara", bomb)]), "bomb.png")
