"""Personas edited as text (the Personas tab): checked by the loader itself, saved beside the shipped ones
without touching them, and only by admins through the running app (/persona_check, /persona_save)."""

from __future__ import annotations

import tomllib

import pytest
from gradio_client import Client

import app
from krishna_ai.core.drafts import check_persona_text, persona_text, save_persona_text
from krishna_ai.core.errors import PersonaError
from krishna_ai.core.personas import PROMPTS_DIR, load_persona, load_personas
from krishna_ai.studio.access import ModelPolicy
from krishna_ai.studio.persona_editor import _form, _toml, card_draft, draft_card
from krishna_ai.studio.service import Studio
from krishna_ai.studio.ui import build_demo
from tests.conftest import free_port

P = load_personas()
TUTOR = 'id = "tutor"\nname = "Tutor"\ndescription = "Explains fractions."\ngreeting = "Hello!"\n' \
        'system_prompt = "You explain fractions to children in two short sentences."\n'


@pytest.mark.parametrize("persona_id", sorted(P))
def test_a_shipped_persona_as_text_loads_the_same_from_any_folder(persona_id, tmp_path):
    text = persona_text(P[persona_id])
    assert check_persona_text(text) == P[persona_id]
    (tmp_path / f"{persona_id}.toml").write_text(text)
    assert load_persona(tmp_path / f"{persona_id}.toml") == P[persona_id]


def test_a_draft_gets_the_loaders_own_errors_named_as_its_file():
    bad = TUTOR.replace('greeting = "Hello!"\n', "") + "[sampling]\ntemperature = 9\ntop_q = 1\n"
    with pytest.raises(PersonaError) as caught:
        check_persona_text(bad)
    message = str(caught.value)
    assert message.startswith("tutor.toml: invalid persona (3 problem(s))")
    for part in ("tutor.toml: greeting: required field is missing",
                 "sampling.temperature: Input should be less than or equal to 2",
                 "sampling.top_q: unknown key"):
        assert part in message, message
    assert "/tmp" not in message  # never the checker's scratch folder
    with pytest.raises(PersonaError, match="not valid TOML"):
        check_persona_text('id = "x"\nname = ')
    with pytest.raises(PersonaError, match="adapters.light: .*no/such/adapter does not exist"):
        check_persona_text(TUTOR + 'adapters = { light = "no/such/adapter" }\n')  # relative: to where it is saved


def test_saving_refuses_a_shipped_id_or_a_saved_one_unless_confirmed(tmp_path):
    path, saved = save_persona_text(TUTOR, tmp_path)
    assert path == tmp_path / "tutor.toml" and saved.id == "tutor" and load_personas([tmp_path])["tutor"] == saved
    with pytest.raises(PersonaError, match="saved already"):
        save_persona_text(TUTOR.replace("Hello!", "Hi!"), tmp_path)
    assert save_persona_text(TUTOR.replace("Hello!", "Hi!"), tmp_path, replace=True)[1].greeting == "Hi!"
    pet = persona_text(P["pet"]).replace(P["pet"].name, "My PET")
    shipped = (PROMPTS_DIR / "pet.toml").read_text()
    with pytest.raises(PersonaError, match="shipped persona"):
        save_persona_text(pet, tmp_path)
    save_persona_text(pet, tmp_path, replace=True)
    assert (PROMPTS_DIR / "pet.toml").read_text() == shipped  # the shipped file is never touched
    assert load_personas([PROMPTS_DIR, tmp_path])["pet"].name == "My PET"  # in its place in this install
    with pytest.raises(PersonaError):
        save_persona_text(TUTOR.replace('id = "tutor"', 'id = "Bad Id"'), tmp_path / "new")
    assert not (tmp_path / "new").exists()  # nothing written for a bad persona


def test_the_form_and_the_toml_stay_in_step():
    text = persona_text(P["pet"])
    values = _form(text)
    assert values[:5] == [P["pet"].id, P["pet"].name, P["pet"].description, P["pet"].greeting,
                          P["pet"].system_prompt]
    values[1] = "PET, renamed"
    values[5] = "First question?\n\n Second question? "
    out = tomllib.loads(_toml(text, values))
    assert out["name"] == "PET, renamed" and out["examples"] == ["First question?", "Second question?"]
    assert out["style"] == tomllib.loads(text)["style"]  # the tables the form does not show are kept
    assert check_persona_text(_toml(text, values)).name == "PET, renamed"
    assert all(v is not None for v in _form("not = [toml")) and len(_form("not = [toml")) == 8
    # a file that says nothing of sampling keeps the defaults through the form (it writes them, unchanged)
    assert check_persona_text(_toml(TUTOR, _form(TUTOR))).sampling == check_persona_text(TUTOR).sampling


@pytest.fixture
def launched(scripted, tmp_path):
    """The app with logins: 'ana' is an admin, 'ben' is not; saved personas go to tmp_path/prompts."""
    creds = tmp_path / "logins.txt"
    creds.write_text("ana:pw-ana\nben:pw-ben\n")
    args = app.parse_args(["--port", str(free_port()), "--no-preload", "--model", "light", "--no-history",
                           "--auth-file", str(creds), "--admin", "ana"])
    engine = scripted(["Half ", "of ", "two ", "is ", "one."])
    studio = Studio(P, default_model="light", loader=lambda spec, adapter: engine, policy=ModelPolicy(["light"]),
                    admins=app.admins(args), prompts_dir=tmp_path / "prompts")
    demo = build_demo(studio)
    app.launch(demo, args, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{args.port}/", studio, engine
    demo.close()


def test_only_an_admin_may_check_or_save_a_persona_and_a_saved_one_answers_at_once(launched, tmp_path):
    url, studio, engine = launched
    ben = Client(url, auth=("ben", "pw-ben"), verbose=False)
    with pytest.raises(Exception, match="admins"):
        ben.predict(TUTOR, api_name="/persona_save")
    with pytest.raises(Exception, match="admins"):
        ben.predict(TUTOR, api_name="/persona_check")
    assert not (tmp_path / "prompts").exists()

    ana = Client(url, auth=("ana", "pw-ana"), verbose=False)
    bad = ana.predict(TUTOR.replace("Explains", "") + "bogus = 1\n", api_name="/persona_check")
    assert bad["ok"] is False and "bogus: unknown key" in bad["errors"]
    assert ana.predict(TUTOR, api_name="/persona_check") == {"ok": True, "id": "tutor", "errors": ""}
    saved = ana.predict(TUTOR, False, api_name="/persona_save")
    assert saved["id"] == "tutor" and (tmp_path / "prompts" / "tutor.toml").is_file()
    with pytest.raises(Exception, match="shipped persona"):
        ana.predict(persona_text(P["pet"]), False, api_name="/persona_save")
    reply = ben.predict("What is half of two?", "tutor", api_name="/reply")  # everyone may chat with it
    assert reply["reply"] == "Half of two is one."
    assert "You explain fractions" in str(engine.calls[-1][0][0]["content"])


def test_admin_needs_logins_that_exist():
    with pytest.raises(SystemExit, match="--admin names logins"):
        app.admins(app.parse_args(["--admin", "ana"]))
    with pytest.raises(SystemExit, match="--admin carl: not a login"):
        app.admins(app.parse_args(["--auth", "ana:pw", "--admin", "carl"]))
    assert app.admins(app.parse_args([])) is None  # no logins, this machine only: the local user
    assert app.admins(app.parse_args(["--share", "--no-login"])) == frozenset()  # served to strangers: nobody


def test_a_draft_goes_out_as_a_character_card_and_comes_back_into_the_editor(tmp_path):
    text = persona_text(P["pet"]).replace(P["pet"].greeting, "Paste a prompt and I will sharpen it.")
    card = draft_card(text, tmp_path)
    assert card.suffix == ".png" and card.is_file()
    back, lost = card_draft(card)
    again = check_persona_text(back)
    assert again.name == P["pet"].name and again.greeting == "Paste a prompt and I will sharpen it."
    assert again.id == "pet-prompt-engineering-coach"  # a card carries a name, not an id: made from the name
    assert again.system_prompt.strip() and lost == []
    with pytest.raises(PersonaError):
        draft_card('id = "x"\n', tmp_path)  # not a valid persona: no card
    assert list(tmp_path.glob("x*")) == []
