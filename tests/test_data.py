"""Training data: every bad line reported with its number and reason; shipped datasets are sound."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from krishna_ai.core.errors import DataError
from krishna_ai.core.knowledge import load_bank
from krishna_ai.core.personas import load_personas
from krishna_ai.core.style import check_reply
from krishna_ai.training.data import (
    IGNORE_INDEX,
    ConversationEncoder,
    load_conversations,
    load_image_folder,
    load_persona_source,
    persona_conversations,
)
from tests.conftest import REPO, krishna_with_counsel

OK = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def test_every_bad_line_reported_with_number(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    lines = [
        json.dumps(OK),                                                                   # 1 fine
        "{not json",                                                                      # 2
        json.dumps([1, 2]),                                                               # 3
        json.dumps({"messages": []}),                                                     # 4
        json.dumps({"messages": [{"role": "wizard", "content": "x"}]}),                   # 5
        json.dumps({"messages": [{"role": "user", "content": "  "},
                                 {"role": "assistant", "content": "a"}]}),                # 6
        json.dumps({"messages": [{"role": "user", "content": "q"}]}),                     # 7
        json.dumps({"messages": [{"role": "user", "content": [{"type": "image", "image": "missing.png"},
                                                              {"type": "text", "text": "q"}]},
                                 {"role": "assistant", "content": "a"}]}),                # 8
        json.dumps({"messages": [{"role": "user", "content": [{"type": "image", "image": "broken.png"}]},
                                 {"role": "assistant", "content": "a"}]}),                # 9
        json.dumps({**OK, "extra": 1}),                                                   # 10
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                 {"role": "assistant", "content": "c"}]}),                # 11
        json.dumps({"messages": [{"role": "user", "content": [{"type": "image", "image": "ok.png"},
                                                              {"type": "text", "text": "q"}]},
                                 {"role": "assistant", "content": "a"}]}),                # 12 fine
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as exc:
        load_conversations(path)
    assert "not valid JSON" in str(exc.value) and "train.jsonl:2" in str(exc.value)
    path.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # JSON errors stop early; check the rest
    with pytest.raises(DataError) as exc:
        load_conversations(path)
    msg = str(exc.value)
    expected = {
        2: "expected a JSON object", 3: "non-empty list", 4: "role must be one of", 5: "empty content",
        6: "last message must be the assistant", 7: "unreadable image", 8: "unreadable image",
        9: "unknown key(s) ['extra']", 10: "must alternate",
    }
    for line, reason in expected.items():
        assert any(f"train.jsonl:{line}" in row and reason in row for row in msg.splitlines()), (line, msg)
    assert "train.jsonl:1:" not in msg and "train.jsonl:11:" not in msg


def test_image_folder_dataset(tmp_path):
    for label in ("Common_Rust", "Healthy"):
        (tmp_path / label).mkdir()
        Image.new("RGB", (20, 20), "green").save(tmp_path / label / "a.jpg")
    convs = load_image_folder(tmp_path, persona=load_personas()["maize"])
    assert [c[-1]["content"] for c in convs] == ["Common Rust", "Healthy"]
    assert convs[0][0]["role"] == "system" and convs[0][1]["content"][0]["type"] == "image"
    (tmp_path / "Healthy" / "bad.jpg").write_text("nope")
    (tmp_path / "Healthy" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as exc:
        load_image_folder(tmp_path)
    assert "bad.jpg: unreadable image" in str(exc.value) and "notes.txt: not an image file name" in str(exc.value)


def test_persona_source_errors(tmp_path):
    path = tmp_path / "src.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": ""}) + "\n" + json.dumps({"question": "q", "x": 1}) + "\n")
    with pytest.raises(DataError) as exc:
        load_persona_source(path)
    msg = str(exc.value)
    assert 'src.jsonl:1: "answer" must be a non-empty string' in msg
    assert "src.jsonl:2: unknown key(s) ['x']" in msg and 'src.jsonl:2: "answer"' in msg


def test_the_counsel_training_set_applies_a_teaching_in_every_answer(tmp_path):
    """data/krishna/train-counsel.jsonl: the same questions and stories, each counsel rewritten to apply one
    teaching of the Gita bank, shown in its prompt (README "Tried first: the model applying a teaching")."""
    from krishna_ai.core.records import record_teachings

    k = krishna_with_counsel(tmp_path)
    counsel = load_persona_source(REPO / "data/krishna/train-counsel.jsonl")
    plain = load_persona_source(REPO / "data/krishna/train.jsonl")
    assert [r["question"] for r in counsel] == [r["question"] for r in plain]
    assert [r["answer"].split("\n\n", 1)[1] for r in counsel] == [r["answer"].split("\n\n", 1)[1] for r in plain]
    gita = load_bank(k.counsel.bank)
    assert len({gita.card(r["teaching"]).id for r in counsel}) >= 25  # every answer applies one, of many
    broken = {r["question"]: [str(v) for v in check_reply(r["answer"], k)] for r in counsel}
    assert not any(broken.values()), [(q, v) for q, v in broken.items() if v][:3]
    assert record_teachings(k, counsel[0]) == [gita.card(counsel[0]["teaching"])]
    assert gita.card(counsel[0]["teaching"]).text in persona_conversations(k, counsel[:1])[0][0]["content"]


def test_the_pet_tasks_set_keeps_each_task_and_leaves_the_unknown_as_placeholders():
    """data/pet/train-tasks.jsonl (README "PET: does the rewrite keep the task?"): the same prompts as train.jsonl,
    every rewrite keeping the user's task, with [placeholders] where the old answers invented details."""
    from krishna_ai.core.rewrites import contradictions, improved_part, keeps_task

    pet = load_personas()["pet"]
    tasks = load_persona_source(REPO / "data/pet/train-tasks.jsonl")
    assert [r["question"] for r in tasks] == [r["question"] for r in load_persona_source(REPO / "data/pet/train.jsonl")]
    assert not [r["question"] for r in tasks if check_reply(r["answer"], pet)]
    rewrites = [(r["question"], improved_part(r["answer"], pet.style.rewrite)) for r in tasks]
    assert all(rw and "[" in rw for _, rw in rewrites)
    assert not [q for q, rw in rewrites if contradictions(q, rw)]
    lost = [q for q, rw in rewrites if not keeps_task(q, rw)[0]]
    assert len(lost) <= 2, lost  # "image prompt: logo …" and "wallpaper …, something calm": rewritten, not copied


def test_shipped_krishna_dataset_is_sound():
    k = load_personas()["krishna"]
    train = load_persona_source(REPO / "data/krishna/train.jsonl")
    held = [json.loads(line) for line in (REPO / "data/krishna/heldout.jsonl").read_text().splitlines()]
    assert len(train) >= 200 and len(held) == 50
    train_q = {r["question"].strip().lower() for r in train}
    assert not any(h["question"].strip().lower() in train_q for h in held)
    bank = load_bank(k.knowledge.bank)
    assert len({r["card"] for r in train}) >= 40  # many different stories, each one a card retold
    bad = [(r["question"], [str(v) for v in check_reply(r["answer"], k)]) for r in train if check_reply(r["answer"], k)]
    assert not bad, bad[:3]
    for r in train:  # the story a model learns is exactly its card: it learns to retell, not to recall
        assert r["answer"].split("\n\n", 1)[1] == bank.card(r["card"]).text
    convs = persona_conversations(k, train[:2])
    card = bank.card(train[0]["card"])
    assert convs[0][0]["role"] == "system" and card.text in convs[0][0]["content"]
    assert f"about {card.person}" in convs[0][0]["content"]


@pytest.mark.parametrize("name", ["maize", "aurora", "pet"])
def test_shipped_small_sets(name):
    persona = load_personas()[name]
    train = load_persona_source(REPO / f"data/{name}/train.jsonl")
    held = load_persona_source(REPO / f"data/{name}/heldout.jsonl")
    assert len(train) >= 100 and len(held) >= 15
    train_q = {r["question"].strip().lower() for r in train}
    assert not any(h["question"].strip().lower() in train_q for h in held)  # held-out stays apart
    assert all(not check_reply(r["answer"], persona) for r in train), [
        (r["question"], check_reply(r["answer"], persona)) for r in train if check_reply(r["answer"], persona)][:3]
    if name == "maize":
        assert {r["label"] for r in train} == set(persona.labels)
    if persona.knowledge:  # every fact a training answer states is in the card its prompt shows
        from krishna_ai.core.records import record_cards
        from krishna_ai.training.evaluate import faithfulness

        unfaithful = [(r["question"], faithfulness(persona, r["question"], r["answer"], record_cards(persona, r)))
                      for r in train]
        unfaithful = [u for u in unfaithful if not u[1][0]]
        assert len(unfaithful) <= len(train) // 20, unfaithful[:5]


def test_labels_only_on_assistant_tokens():
    from transformers import AutoTokenizer

    from krishna_ai.runtime.light import ensure_light_checkpoint

    tok = AutoTokenizer.from_pretrained(ensure_light_checkpoint())
    msgs = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Partha, hello."}, {"role": "user", "content": "Again"},
            {"role": "assistant", "content": "Yes."}]
    out = ConversationEncoder(tok).encode(msgs)
    ids, labels = out["input_ids"], out["labels"]
    learned = tok.decode(ids[labels != IGNORE_INDEX])
    assert learned == "Partha, hello.<end_of_turn>\nYes.<end_of_turn>\n"
    assert (labels[labels != IGNORE_INDEX] == ids[labels != IGNORE_INDEX]).all()
    assert tok.decode(ids).startswith("<bos><start_of_turn>user\nBe kind.")


def _light_tokenizer():
    from transformers import AutoTokenizer

    from krishna_ai.runtime.light import ensure_light_checkpoint

    return AutoTokenizer.from_pretrained(ensure_light_checkpoint())


def test_an_answer_past_max_seq_length_is_an_error_not_a_silent_cut():
    """Cutting inside an answer drops its <end_of_turn>: the model would learn never to stop (maize did)."""
    from krishna_ai.training.data import TooLong, encode_all

    tok = _light_tokenizer()
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    long = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 60}]
    whole = ConversationEncoder(tok, max_length=1024).encode(long)
    needed = len(whole["input_ids"])
    enc = ConversationEncoder(tok, max_length=needed - 1)
    with pytest.raises(TooLong, match=f"ends at token {needed}, past max_seq_length {needed - 1}"):
        enc.encode(long)
    with pytest.raises(DataError) as err:
        encode_all(enc, [short, long, short, long])
    assert str(err.value).startswith(f"2 of 4 conversations are longer than max_seq_length {needed - 1}")
    assert f"Set max_seq_length to at least {needed}." in str(err.value)
    rows = encode_all(ConversationEncoder(tok, max_length=needed), [short, long])  # exactly fits: nothing cut
    assert tok.decode(rows[1]["input_ids"][-2:]) == "<end_of_turn>\n"
    # A long prompt before a short answer still ends in the answer's end of turn when it fits.
    assert rows[0]["labels"][-2] == tok.convert_tokens_to_ids("<end_of_turn>")


@pytest.mark.parametrize("recipe", ["krishna-light", "aurora-light", "pet-light", "maize-light"])
def test_every_shipped_light_recipe_fits_its_max_seq_length(recipe):
    from krishna_ai.training.config import TrainConfig
    from krishna_ai.training.data import encode_all
    from krishna_ai.training.sft import load_training_conversations

    cfg = TrainConfig.from_yaml(REPO / "configs" / f"{recipe}.yaml")
    cfg.data = str(REPO / cfg.data)
    convs = load_training_conversations(cfg)
    rows = encode_all(ConversationEncoder(_light_tokenizer(), max_length=cfg.max_seq_length), convs)
    assert len(rows) == len(convs) >= 100
