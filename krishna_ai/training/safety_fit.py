"""Fitting and measuring the crisis check by meaning (krishna_ai/core/safety.py).

    python -m krishna_ai safety fit        # writes prompts/safety/crisis.json
    python -m krishna_ai safety eval       # caught / flagged on data/safety/heldout*.jsonl, patterns and model

The model (`core/crisis_net.Net`) is a multinomial logistic regression over a message's TF-IDF words and word
pairs and character n-grams beside its all-MiniLM-L6-v2 sentence vector: the labelled crisis messages of
`data/safety/dev*.jsonl` (`"crisis": kind`) against everyday messages (the dev files' `"crisis": null` look-alikes
and every persona's own training and held-out questions). Its thresholds on P(crisis), a whole message's and a
sentence's, together flag at most `MAX_FLAGGED` of the everyday messages in cross-validation. `eval` is the number
to quote: messages none of it was fitted on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from krishna_ai.core.cache import write_text
from krishna_ai.core.crisis_net import ANALYZERS, Net, Terms, sentences
from krishna_ai.core.errors import InputError
from krishna_ai.core.gate import threshold_allowing, threshold_for
from krishna_ai.core.safety import CRISES, MEANING_MODEL, NET, Crisis, by_pattern, crisis, normal

DATA = Path(__file__).resolve().parents[2] / "data"
DEV = sorted((DATA / "safety").glob("dev*.jsonl"))
HELDOUT = sorted((DATA / "safety").glob("heldout*.jsonl"))
MAX_FLAGGED = 0.02
"""The share of everyday messages the model may flag, cross-validated: a helpline reply to "this exam is killing me"
is a wrong answer, but a poem for "nobody would miss me" is a far worse one."""


def labelled(paths: Iterable[Path]) -> list[tuple[str, str | None]]:
    """(message, kind or None) of each line of `paths` (JSONL: message, crisis); InputError names a bad line."""
    rows = []
    for path in paths:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                message, kind = obj["message"], obj["crisis"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InputError(f"{path.name} line {n}: not a labelled message ({exc})") from None
            if kind is not None and kind not in CRISES:
                raise InputError(f"{path.name} line {n}: crisis {kind!r} is not one of {', '.join(CRISES)} or null")
            rows.append((str(message), kind))
    return rows


def persona_questions(data: Path = DATA) -> list[str]:
    """Every persona's own questions (training, held-out, scope sets): everyday messages, all of them."""
    questions: list[str] = []
    for path in sorted(data.glob("*/*.jsonl")):
        if path.parent.name == "safety":
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            obj = json.loads(line)
            questions += [obj["question"]] if "question" in obj else [
                m["content"] for m in obj.get("messages", []) if m["role"] == "user" and isinstance(m["content"], str)]
    return sorted(set(questions))


MIN_DF = {"words": 2, "chars": 3}
"""In how many messages a term must be to be one of the model's (TF-IDF block by analyzer)."""


def fit_net(out: Path = NET, dev: Iterable[Path] = DEV, max_flagged: float = MAX_FLAGGED,
            analyzers: tuple[str, ...] = ("words", "chars"), by_sentence: bool = True) -> Net:
    """Fit the crisis model and write it to `out`: C and the thresholds chosen on 5-fold cross-validated
    predictions. The thresholds flag at most `max_flagged` of the everyday messages together: a whole message's,
    and (with `by_sentence`) one for any of its `sentences`, the split between them chosen, like C, to catch the most
    crisis messages. The TF-IDF terms and weights of each of `analyzers` (`MIN_DF`: words and word pairs seen in
    two messages, character n-grams in three) are fitted on all the messages first (no labels)."""
    import numpy as np
    from scipy.sparse import csr_matrix, hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from krishna_ai.core.vectors import sentence_vectors

    rows = labelled(dev)
    everyday = sorted({m for m, k in rows if k is None} | set(persona_questions()))
    crises = sorted({(m, k) for m, k in rows if k is not None}, key=lambda r: (r[1], r[0]))
    if missing := [k for k in CRISES if k not in {k for _, k in crises}]:
        raise InputError(f"no {', '.join(missing)} message in {', '.join(p.name for p in dev)}: "
                         "each kind needs examples")
    texts = [normal(m) for m in everyday] + [normal(m) for m, _ in crises]
    classes: tuple[Crisis | None, ...] = (None, *CRISES)
    y = np.array([0] * len(everyday) + [classes.index(k) for _, k in crises])
    pieces = [sentences(t) for t in texts] if by_sentence else [[] for _ in texts]
    owner = np.array([i for i, ps in enumerate(pieces) for _ in ps], dtype=np.int64)
    flat = [p for ps in pieces for p in ps]
    vectors = sentence_vectors(texts + flat)
    blocks = {name: TfidfVectorizer(analyzer=ANALYZERS[name], min_df=MIN_DF[name], sublinear_tf=True)
              for name in analyzers}
    x = hstack([*(b.fit_transform(texts) for b in blocks.values()), csr_matrix(vectors[:len(texts)])]).tocsr()
    xp = hstack([*(b.transform(flat) for b in blocks.values()), csr_matrix(vectors[len(texts):])]).tocsr() if flat \
        else None

    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(x, y))
    best: tuple[float, float, float, float | None, Any, Any] | None = None  # recall, C, thresholds, CV scores
    for c in (1.0, 3.0, 10.0, 30.0):
        whole, sent = np.zeros(len(texts)), np.zeros(len(texts))  # P(crisis): the message's, its likeliest sentence's
        for train, test in folds:
            lr = LogisticRegression(C=c, max_iter=5000).fit(x[train], y[train])
            whole[test] = 1.0 - lr.predict_proba(x[test])[:, 0]
            if xp is not None and (mine := np.isin(owner, test)).any():
                np.maximum.at(sent, owner[mine], 1.0 - lr.predict_proba(xp[mine])[:, 0])
        recall, threshold, sentence_threshold = thresholds(whole, sent if xp is not None else None, y, max_flagged)
        if best is None or recall > best[0]:
            best = (recall, c, threshold, sentence_threshold, whole, sent if xp is not None else None)
    assert best is not None
    recall, c, threshold, sentence_threshold, whole, sent = best
    lr = LogisticRegression(C=c, max_iter=5000).fit(x, y)
    report = {"everyday": len(everyday), **{k: sum(1 for _, kk in crises if kk == k) for k in CRISES}, "C": c,
              "cv_crisis_caught": round(recall, 4), "cv_everyday_flagged_max": max_flagged,
              "cv_crisis_caught_whole_messages_only": round(thresholds(whole, None, y, max_flagged)[0], 4),
              "cv_crisis_caught_by_everyday_flagged": {f"{share:.1%}": round(thresholds(whole, sent, y, share)[0], 4)
                                                       for share in (0.005, 0.01, 0.02, 0.05)}}
    terms = tuple(Terms(name, {t: int(i) for t, i in b.vocabulary_.items()}, b.idf_) for name, b in blocks.items())
    net = Net(terms, lr.coef_, lr.intercept_, classes, threshold, MEANING_MODEL, sentence_threshold, report)
    write_text(out, net.to_json())
    return net


def thresholds(whole: Any, sent: Any | None, y: Any, share: float) -> tuple[float, float, float | None]:
    """(crisis messages caught, the whole-message threshold, the sentence threshold or None) that together flag at
    most `share` of the everyday messages (`y == 0`), from P(crisis) of each message (`whole`) and of its likeliest
    sentence (`sent`, 0 for a message of one; None: whole messages only). The whole-message threshold takes from
    all of `share` down to half of it, and the sentence threshold the rest; the split catching most wins."""
    import numpy as np

    everyday, crisis_ = y == 0, y > 0
    best: tuple[float, float, float | None] | None = None
    for whole_share in (share,) if sent is None else (share, share * 0.875, share * 0.75, share * 0.625, share * 0.5):
        threshold = threshold_for(whole[everyday], whole_share)
        hit = whole >= threshold
        sentence_threshold = None
        if sent is not None:
            # how many more of the everyday messages it leaves may be flagged (none when the whole-message
            # threshold, clamped under 1, took them all)
            allowed = max(int(np.floor(share * everyday.sum())) - int((hit & everyday).sum()), 0)
            sentence_threshold = threshold_allowing(sent[everyday & ~hit], allowed)
            hit = hit | (sent >= sentence_threshold)
        recall = float(hit[crisis_].mean())
        if best is None or recall > best[0]:
            best = (recall, threshold, sentence_threshold)
    assert best is not None
    return best


@dataclass
class Measured:
    """Crisis messages caught (and of the right kind) and everyday ones flagged, by one way of judging."""

    name: str
    crisis: int = 0
    caught: int = 0
    right_kind: int = 0
    everyday: int = 0
    flagged: int = 0
    missed: list[str] = field(default_factory=list)
    wrongly_flagged: list[str] = field(default_factory=list)


def measure(rows: list[tuple[str, str | None]]) -> list[Measured]:
    """Patterns alone, and patterns then the model by meaning (as the app judges), on labelled messages."""
    results = []
    for name, judge in (("patterns alone", lambda m: by_pattern(normal(m))),
                        ("patterns, then the model by meaning (shipped)", crisis)):
        r = Measured(name)
        for message, kind in rows:
            got = judge(message)
            if kind is None:
                r.everyday += 1
                if got:
                    r.flagged += 1
                    r.wrongly_flagged.append(f"{message}  [{got}]")
            else:
                r.crisis += 1
                r.caught += got is not None
                r.right_kind += got == kind
                if got is None:
                    r.missed.append(f"{message}  [{kind}]")
        results.append(r)
    return results


def format_measured(results: list[Measured], show: bool = False) -> str:
    lines = ["| judged by | crisis messages caught | of the right kind | everyday messages flagged |",
             "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.caught}/{r.crisis} ({r.caught / max(r.crisis, 1):.0%}) | "
                     f"{r.right_kind}/{r.crisis} | {r.flagged}/{r.everyday} ({r.flagged / max(r.everyday, 1):.1%}) |")
    if show:
        for r in results:
            lines += [f"\n{r.name}: missed"] + [f"  {m}" for m in r.missed]
            lines += [f"{r.name}: flagged"] + [f"  {m}" for m in r.wrongly_flagged]
    return "\n".join(lines)
