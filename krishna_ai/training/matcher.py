"""Tuning the sentence model that chooses a counsel card: the questions' side, on the cards' own examples.

    python -m krishna_ai matcher fit                  # every persona with [counsel] matcher: writes its LoRA
    python bench/counsel_fit.py                       # the held-out table, with and without it

A counsel card lists the troubles it was written for (`examples`, ~11 a card). The plain all-MiniLM-L6-v2 puts
"my brother earns more than me" as near the card for being envied as the card for envying, so the fused ranking
often picks a neighbouring situation (README "Written counsel"). Here a LoRA on the sentence model's attention and
feed-forward layers is trained so that each example's vector scores its own card highest, among all the bank's
cards, by the very score the app ranks with (`Bank.similarity`: the card's cosine plus its nearest example's,
the example itself left out). Only the questions' side changes: the cards' and examples' vectors stay the plain
model's (cached as before), so a card added later is ranked at once, without fitting again.

Two examples of every card are held back (never trained on, and left out of the nearest-example score while
measuring), and the report gives how often their own card and a card of their topic come first, plain and tuned.
The held-out questions (data/krishna/heldout*.jsonl) are measured by bench/counsel_fit.py, never trained on.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from krishna_ai.core.cache import atomic_dir
from krishna_ai.core.errors import PersonaError
from krishna_ai.core.knowledge import Bank, load_bank
from krishna_ai.core.personas import load_persona
from krishna_ai.core.vectors import MODEL_NAME, load_model, sentence_vectors

SCALE = 10.0
"""The scores (two cosines, -2..2) are multiplied by this before the softmax over the bank's cards."""
TARGETS = ["query", "key", "value", "dense"]
"""MiniLM's linear layers the LoRA adapts (attention and feed-forward)."""


@dataclass
class Settings:
    """How a matcher is fitted (the defaults were chosen on the held-back examples, README "A tuned matcher")."""

    epochs: int = 2
    rank: int = 8
    learning_rate: float = 1e-3
    batch_size: int = 32
    held_per_card: int = 2
    seed: int = 0


@dataclass
class Fitted:
    """What `fit_matcher` wrote and measured."""

    folder: str
    cards: int
    trained_on: int
    held_back: int
    plain: dict[str, float]
    tuned: dict[str, float]
    seconds: float
    settings: dict[str, Any]


def fit_persona(path: str | Path, settings: Settings | None = None, *, progress: bool = True) -> Fitted:
    """Fit the matcher of the persona file at `path` on its counsel cards' examples; write it where
    `counsel.matcher` says."""
    persona = load_persona(path, check_gate=False)
    counsel = persona.counsel
    if counsel is None or counsel.matcher is None:
        raise PersonaError(f"{Path(path).name}: no [counsel] matcher to fit (counsel.matcher is not set)")
    return fit_matcher(load_bank(counsel.bank), counsel.matcher, settings or Settings(), progress=progress)


def held_back(owners: np.ndarray, per_card: int, seed: int) -> np.ndarray:
    """A mask over a bank's examples (`owners`: each one's card index): `per_card` of each card's, chosen at random,
    never trained on. A card with fewer than per_card + 1 examples keeps all of its own."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(owners), dtype=bool)
    for card in range(int(owners.max()) + 1 if len(owners) else 0):
        mine = np.flatnonzero(owners == card)
        if len(mine) > per_card:
            mask[rng.choice(mine, per_card, replace=False)] = True
    return mask


def fit_matcher(bank: Bank, folder: str | Path, settings: Settings, *, progress: bool = True) -> Fitted:
    """Train the LoRA on `bank`'s examples and write it (with `matcher.json`, what it was fitted on and measured)
    to `folder`, which is replaced only once it is whole."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    texts = [e for c in bank.cards for e in c.examples]
    if len(bank.cards) < 2 or len(texts) < 2 * len(bank.cards):
        raise PersonaError(f"{bank.folder}: a matcher needs at least 2 cards with 2 examples each (the troubles they "
                           f"answer, `examples`); found {len(bank.cards)} cards and {len(texts)} examples")
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    owners, vectors = bank.example_vectors()  # the examples' plain vectors, cached with the bank as the app uses them
    held = held_back(owners, settings.held_per_card, settings.seed)
    train = np.flatnonzero(~held)
    cards = torch.tensor(np.asarray(bank.vectors()))
    examples = torch.tensor(np.asarray(vectors)[train])
    example_owner = torch.tensor(owners[train])

    def scores(queries: Any, itself: Any = None) -> Any:
        """The app's score (`Bank.similarity`) of every card for each query, the query's own example left out."""
        near = queries @ examples.T
        if itself is not None:
            near = near.index_put((torch.arange(len(queries)), itself), torch.tensor(-2.0))
        nearest = torch.full((len(queries), len(cards)), -2.0).scatter_reduce(
            1, example_owner.expand(len(queries), -1), near, "amax")
        return queries @ cards.T + nearest

    plain = measure(lambda t: torch.tensor(np.asarray(sentence_vectors(t))), scores, bank, texts, owners, held)
    model = load_model()  # a trainable copy: the process's own model stays as it is
    # The LoRA layers go into the model's own modules (in place), so `model` trains them; `lora` saves them.
    lora = get_peft_model(model[0].auto_model, LoraConfig(
        r=settings.rank, lora_alpha=2 * settings.rank, lora_dropout=0.05, target_modules=TARGETS))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=0.01)
    batches = (len(train) + settings.batch_size - 1) // settings.batch_size
    steps = settings.epochs * batches
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    rng = np.random.default_rng(settings.seed)
    with tqdm(total=steps, desc="matcher", disable=not progress) as bar:
        for _ in range(settings.epochs):
            model.train()
            order = rng.permutation(len(train))
            for start in range(0, len(order), settings.batch_size):
                batch = order[start:start + settings.batch_size]
                features = model.preprocess([texts[train[i]] for i in batch])
                queries = model(features)["sentence_embedding"]
                loss = torch.nn.functional.cross_entropy(SCALE * scores(queries, torch.tensor(batch)),
                                                         example_owner[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update()
                bar.set_postfix(loss=f"{float(loss.detach()):.2f}")
    model.eval()

    def encode(batch_texts: list[str]) -> Any:
        with torch.no_grad():
            return torch.tensor(np.asarray(model.encode(batch_texts, normalize_embeddings=True,
                                                        convert_to_numpy=True)))

    tuned = measure(encode, scores, bank, texts, owners, held)
    fitted = Fitted(folder=str(folder), cards=len(bank.cards), trained_on=len(train), held_back=int(held.sum()),
                    plain=plain, tuned=tuned, seconds=round(time.perf_counter() - started, 1),
                    settings=asdict(settings))
    with atomic_dir(folder) as tmp:
        lora.save_pretrained(str(tmp))
        (tmp / "README.md").unlink(missing_ok=True)  # peft's empty model card; matcher.json says what this is
        config = json.loads((tmp / "adapter_config.json").read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = MODEL_NAME  # not this machine's path to it: merged onto it at load
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        about = {"model": MODEL_NAME, "bank": bank.name, "fingerprint": bank.fingerprint,
                 **asdict(fitted), "folder": Path(folder).name}
        (tmp / "matcher.json").write_text(json.dumps(about, indent=1) + "\n", encoding="utf-8")
    return fitted


def measure(encode: Any, scores: Any, bank: Bank, texts: list[str], owners: np.ndarray,
            held: np.ndarray) -> dict[str, float]:
    """How often a held-back example's own card, and a card of its topic (first theme), scores best."""
    rows = np.flatnonzero(held)
    if not len(rows):
        return {"own card": 0.0, "topic": 0.0}
    best = scores(encode([texts[i] for i in rows])).argmax(1).numpy()
    topic = [bank.cards[b].themes[0] if bank.cards[b].themes else "" for b in best]
    wanted = [bank.cards[owners[i]].themes[0] if bank.cards[owners[i]].themes else "" for i in rows]
    return {"own card": round(float(np.mean(best == owners[rows])), 4),
            "topic": round(float(np.mean([a == b for a, b in zip(topic, wanted, strict=True)])), 4)}
