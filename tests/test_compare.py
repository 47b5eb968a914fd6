"""Side-by-side comparisons: saved with both replies, voted on, ranked on a leaderboard, exported as preference
pairs; and the /compare, /vote, /leaderboard API of the running app (scripted models, a real server)."""

from __future__ import annotations

import json

import pytest
from gradio_client import Client

import app
from krishna_ai.core.errors import InputError
from krishna_ai.core.personas import load_personas
from krishna_ai.history.chatfile import export_feedback, vote_pairs
from krishna_ai.history.store import HistoryStore
from krishna_ai.history.votes import Side, VoteNotFound, leaderboard, save_compare, standings, vote, votes
from krishna_ai.studio.access import ModelPolicy
from krishna_ai.studio.compare import Contestant, contestant_choices
from krishna_ai.studio.service import Studio
from krishna_ai.studio.ui import build_demo
from krishna_ai.training.dpo import load_preferences
from tests.conftest import free_port, served

P = load_personas()
ENDED = {"stats": {"finish_reason": "end_of_turn"}}


@pytest.fixture
def store(tmp_path):
    s = HistoryStore(f"sqlite:///{tmp_path / 'h.db'}", data_dir=tmp_path / "data")
    yield s
    s.close()


def side(model: str, reply: str, finish: str = "end_of_turn") -> Side:
    return Side(model, reply, {"stats": {"finish_reason": finish}, "sources": []})


def test_a_vote_is_saved_with_both_replies_and_only_its_owner_may_cast_it(store):
    cid = save_compare(store, "asha", "krishna", "How do I stay calm?", side("tuned", "Partha, breathe."),
                       side("base", "Calm is calm is calm."))
    assert votes(store) == []  # not voted yet: not on the leaderboard
    assert [v.id for v in votes(store, voted=False)] == [cid]
    with pytest.raises(VoteNotFound, match="no comparison"):
        vote(store, "ravi", cid, "a")  # another user's comparison reads as none
    with pytest.raises(InputError, match="a, b, tie, bad"):
        vote(store, "asha", cid, "left")
    saved = vote(store, "asha", cid, "A ")
    assert saved.winner == "a" and saved.a.reply == "Partha, breathe." and saved.b.model == "base"
    assert saved.voted_at is not None and saved.a.meta["stats"]["finish_reason"] == "end_of_turn"
    assert vote(store, "asha", cid, "tie").winner == "tie"  # a vote can be changed
    assert [v.winner for v in votes(store, "krishna")] == ["tie"] and votes(store, "maize") == []
    with pytest.raises(InputError, match="label"):
        save_compare(store, "asha", "krishna", "q", side("", "x"), side("b", "y"))


def test_standings_count_games_give_wilson_intervals_and_rank_by_bradley_terry(store):
    def compared(a: str, b: str, winner: str) -> None:
        vote(store, "asha", save_compare(store, "asha", "pet", "q", side(a, "x"), side(b, "y")), winner)

    for winner in ["a"] * 8 + ["b"] * 2:
        compared("tuned", "base", winner)
    compared("base", "tuned", "tie")
    compared("base", "tuned", "bad")
    for winner in ["a", "a", "b"]:
        compared("base", "other", winner)
    rows = {s.model: s for s in leaderboard(store, "pet")}
    tuned, base, other = rows["tuned"], rows["base"], rows["other"]
    assert (tuned.games, tuned.wins, tuned.losses, tuned.ties, tuned.both_bad) == (12, 8, 2, 1, 1)
    assert tuned.win_rate == pytest.approx(0.8)
    assert (round(tuned.low, 3), round(tuned.high, 3)) == (0.49, 0.943)  # Wilson 95% for 8 of 10
    assert base.wins == 4 and base.losses == 9 and other.win_rate == pytest.approx(1 / 3)
    assert [s.model for s in leaderboard(store, "pet")] == ["tuned", "base", "other"]
    assert tuned.score > base.score > other.score
    assert sum(s.score for s in rows.values()) == pytest.approx(0.0, abs=1e-9)
    assert standings([]) == []


def test_votes_for_a_side_become_preference_pairs_in_feedback_export(store, tmp_path):
    won = save_compare(store, "asha", "krishna", "I failed my exam.", side("tuned", "Partha, rise and study."),
                       side("base", "Exams exams exams."))
    vote(store, "asha", won, "a")
    tie = save_compare(store, "asha", "krishna", "Q2", side("tuned", "x"), side("base", "y"))
    vote(store, "asha", tie, "tie")
    cut = save_compare(store, "asha", "krishna", "Q3", side("tuned", "half a rep", "max_tokens"), side("base", "z"))
    vote(store, "asha", cut, "a")  # the winner was cut at the token limit: never a chosen answer
    same = save_compare(store, "asha", "krishna", "Q4", side("tuned", "same"), side("base", "same"))
    vote(store, "asha", same, "b")
    other = save_compare(store, "ravi", "krishna", "Q5", side("tuned", "r1"), side("base", "r2"))
    vote(store, "ravi", other, "b")

    pairs = vote_pairs(votes(store, user="asha"), P)["krishna"]
    assert len(pairs) == 1
    pair = pairs[0]
    assert pair["chosen"] == [{"role": "assistant", "content": "Partha, rise and study."}]
    assert pair["rejected"] == [{"role": "assistant", "content": "Exams exams exams."}]
    assert pair["prompt"][0]["role"] == "system" and P["krishna"].system_prompt.strip()[:40] in pair["prompt"][0][
        "content"]
    assert pair["prompt"][-1] == {"role": "user", "content": "I failed my exam."}

    counts = export_feedback(store, tmp_path / "out", user="asha", personas=P)
    assert counts["krishna"]["dpo"] == 1
    assert load_preferences(tmp_path / "out" / "dpo-krishna.jsonl")[0]["chosen"][0]["content"] == \
        "Partha, rise and study."  # DPO training reads what the vote made
    assert export_feedback(store, tmp_path / "all", personas=P)["krishna"]["dpo"] == 2  # ravi's too


def test_contestants_name_the_adapter_they_run_with():
    studio = Studio(P, default_model="light")
    assert Contestant.parse("light|plain") == Contestant("light", plain=True)
    assert Contestant.parse("light-gguf").label(studio, "krishna") == "light-gguf · krishna-light"
    assert Contestant.parse("light-gguf|plain").label(studio, "krishna") == "light-gguf · no adapter"
    assert Contestant("").label(studio, "krishna") == "light · krishna-light"  # the app's model
    assert contestant_choices([("Light", "light")]) == [("Light", "light"), ("Light · no adapter", "light|plain")]


@pytest.fixture
def launched(scripted, tmp_path):
    """The app's own build and launch: Krishna's adapter gives one scripted model, no adapter another."""
    args = app.parse_args(["--port", str(free_port()), "--no-preload", "--model", "light",
                           "--db", f"sqlite:///{tmp_path / 'h.db'}"])
    tuned = scripted(["Partha, ", "rise ", "and ", "study."], delay=0.3)  # slow enough to overlap on a busy machine
    base = scripted(["Exams ", "exams ", "exams."], delay=0.3)
    loads = []

    def loader(spec, adapter):
        loads.append((spec, adapter))
        return tuned if adapter else base

    store, error = app.open_history(args)
    studio = Studio(P, default_model="light", loader=loader, store=store, history_error=error,
                    policy=ModelPolicy(["light"]), scopes=False)  # scope: tests/test_scope.py
    demo = build_demo(studio)
    app.launch(demo, args, prevent_thread_lock=True, quiet=True, store=store)
    yield f"http://127.0.0.1:{args.port}/", studio, loads
    demo.close()


def test_compare_streams_both_saves_the_pair_and_a_vote_moves_the_leaderboard(launched, tmp_path):
    url, studio, loads = launched
    client = Client(url, verbose=False)
    job = client.submit("I failed my exam. What now?", "krishna", "light", "light", False, True,
                        api_name="/compare")
    job.result()
    seen = job.outputs()
    final = seen[-1]
    question = "I failed my exam. What now?"  # both sides Krishna: her written counsel, then each model's text
    assert final["done"] and final["a"] == served("krishna", question, "Partha, rise and study.")
    assert final["b"] == served("krishna", question, "Exams exams exams.")
    assert final["models"] == {"a": "light · krishna-light", "b": "light · no adapter"}
    assert final["facts"]["a"]["finish_reason"] == "end_of_turn"
    # both streamed at once: some update shows both replies under way
    assert any(0 < len(s["a"]) < len(final["a"]) and 0 < len(s["b"]) < len(final["b"]) for s in seen), seen
    assert {a for _, a in loads} == {None, P["krishna"].adapter_for("light")}

    assert client.predict(final["compare_id"], "a", api_name="/vote")["winner"] == "a"
    board = client.predict("krishna", api_name="/leaderboard")
    assert [(r["model"], r["wins"], r["losses"]) for r in board] == [("light · krishna-light", 1, 0),
                                                                    ("light · no adapter", 0, 1)]
    with pytest.raises(Exception, match="a, b, tie, bad"):
        client.predict(final["compare_id"], "left", api_name="/vote")
    with pytest.raises(Exception, match="no comparison"):
        client.predict("0123456789abcdef", "a", api_name="/vote")
    with pytest.raises(Exception, match="is not offered by this server"):
        client.predict("q", "krishna", "/etc/passwd", "light", api_name="/compare")

    counts = export_feedback(studio.store, tmp_path / "out", personas=P)
    row = json.loads((tmp_path / "out" / "dpo-krishna.jsonl").read_text().splitlines()[0])
    # the pair as shown: both open with the same written counsel, whose tokens cancel in DPO's loss
    assert counts["krishna"]["dpo"] == 1 and row["chosen"][0]["content"] == final["a"]
    assert row["rejected"][0]["content"] == final["b"]


def test_closing_a_comparison_stops_both_generations(scripted):
    """Stop (or a client gone) cancels the comparison: both models stop generating, not only the one in front."""
    import asyncio
    import time

    from krishna_ai.studio.compare import both

    tuned, base = scripted(["x "] * 300, delay=0.01), scripted(["y "] * 300, delay=0.01)
    studio = Studio(P, default_model="light", loader=lambda spec, adapter: tuned if adapter else base, scopes=False)

    async def main() -> set[str]:
        seen: set[str] = set()
        stream = both(studio, "krishna", "I failed my exam.", Contestant("light"), Contestant("light", plain=True),
                      session="s", user="u")
        async for side, update, error in stream:
            assert error is None and update is not None
            seen.add(side)
            if seen == {"a", "b"}:
                break
        await stream.aclose()
        return seen

    assert asyncio.run(main()) == {"a", "b"}
    time.sleep(0.3)
    made = (tuned.produced, base.produced)
    time.sleep(0.5)
    assert (tuned.produced, base.produced) == made and max(made) < 300, made
