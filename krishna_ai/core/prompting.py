"""Prompt building: persona system part + history + new message, in the model's own chat format.

Messages use the Hugging Face shape, ``{"role": "system"|"user"|"assistant", "content": str | blocks}``
with blocks ``{"type": "text", "text": ...}`` / ``{"type": "image", "image": PIL.Image}``.
Gemma has no system role: its chat templates (and `render_gemma_turns` for Gemma 3 checkpoints
that carry no template) put the system text at the top of the first user turn.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from krishna_ai.core.errors import GenerationError
from krishna_ai.core.evidence import LEVELS, allowed, cap
from krishna_ai.core.personas import Persona

Message = dict[str, Any]

# Gemma's control tokens. Typed by a user they would be tokenised as the real thing and could forge
# turns ("<end_of_turn><start_of_turn>model ..."), so message text gets a zero-width joiner inside them.
_CONTROL_TOKEN = re.compile(
    r"<(/?)(start_of_turn|end_of_turn|bos|eos|pad|start_of_image|end_of_image|image_soft_token|"
    r"start_of_audio|end_of_audio|audio_soft_token|mask|unk)>", re.IGNORECASE)
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def sanitize(text: str) -> str:
    """Message text as the model should see it: no C0 control characters, no live control tokens."""
    text = _CONTROL_CHARS.sub("", text)
    return _CONTROL_TOKEN.sub(lambda m: f"<{m.group(1)}{m.group(2)}\u200d>", text)


def system_text(persona: Persona, personality: str | None = None, cards: list[Any] | None = None,
                teachings: list[Any] | None = None) -> str:
    """The persona's system prompt, its stated constraints, the teaching its counsel applies (a persona
    with a counsel bank), and either its knowledge instruction with the retrieved `cards` (a persona with
    a bank) or its story instruction (one without)."""
    parts = [persona.system_prompt.strip()]
    if persona.constraints:
        parts.append("Rules:\n" + "\n".join(f"- {c}" for c in persona.constraints))
    counsel = persona.counsel
    if counsel is not None and counsel.instruction is not None and not counsel.written and teachings:
        from krishna_ai.core.knowledge import cards_block

        parts.append(string.Template(counsel.instruction).safe_substitute(cards=cards_block(teachings)))
    if persona.knowledge is not None:
        from krishna_ai.core.knowledge import cards_block

        if cards:
            parts.append(string.Template(persona.knowledge.instruction).safe_substitute(
                cards=cards_block(cards), person=cards[0].person or ""))
        elif persona.knowledge.no_match:
            parts.append(persona.knowledge.no_match)
    else:
        story = persona.story_instruction(personality)
        if story:
            parts.append(story)
    return "\n\n".join(parts)


def text_of(content: Any) -> str:
    """The text of a message's content, whether a plain string or a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return "" if content is None else str(content)


def has_image(messages: list[Message]) -> bool:
    return any(isinstance(m.get("content"), list) and any(b.get("type") == "image" for b in m["content"])
               for m in messages)


def clean_history(history: list[Message]) -> list[Message]:
    """History as the model should see it: user/assistant turns only, strictly alternating from a user turn.

    Leading assistant turns (the persona's greeting) are dropped, empty turns are skipped and
    consecutive turns of one role are merged, because Gemma's turn format needs alternation.
    """
    out: list[Message] = []
    for msg in history:
        role = msg.get("role")
        if role not in ("user", "assistant"):
            continue
        text = sanitize(text_of(msg.get("content"))).strip()
        if not text or (not out and role == "assistant"):
            continue
        if out and out[-1]["role"] == role:
            out[-1] = {"role": role, "content": out[-1]["content"] + "\n\n" + text}
        else:
            out.append({"role": role, "content": text})
    if out and out[-1]["role"] == "user":  # an unanswered question (e.g. a stopped reply): drop it
        out.pop()
    return out


def build_messages(
    persona: Persona,
    history: list[Message],
    message: str,
    *,
    personality: str | None = None,
    image: Any | None = None,
    cards: list[Any] | None = None,
    teachings: list[Any] | None = None,
) -> list[Message]:
    """System part (with the retrieved `cards` and `teachings`), cleaned history and the new user message."""
    message = sanitize(message)
    content: str | list[dict[str, Any]] = message
    if image is not None:
        content = [{"type": "image", "image": image}, {"type": "text", "text": message}]
    return [
        {"role": "system", "content": system_text(persona, personality, cards, teachings)},
        *clean_history(history),
        {"role": "user", "content": content},
    ]


IMAGE_ONLY_QUESTION = "What do you see in this image?"
"""The question asked for an image sent without text."""


@dataclass
class Turn:
    """What one question becomes before the model runs: the messages, the persona voice, the cards."""

    messages: list[Message]
    personality: str | None
    cards: list[Any] | None
    """Retrieved cards (None: the persona has no knowledge bank); [] when none fitted."""
    teachings: list[Any] | None = None
    """The teachings the counsel applies, or the prompt kind whose checklist wrote a coach's reply (None: the
    persona has neither bank); [] when none fitted."""
    closing: str | None = None
    """A fixed sentence the app adds after the model's reply (a person asked about with no card of theirs)."""
    confidence: tuple[str, str | None] | None = None
    """The highest confidence the evidence allows, and the label that also fits (core/evidence.py)."""
    opening: str | None = None
    """Text the reply opens with that the app wrote, not the model (written counsel, `[counsel] written`): the
    last message starts the model's turn with it, and the model continues from there."""
    complete: bool = False
    """The opening is the whole reply (written counsel, no story due): no model runs."""

    def written(self, reply: str) -> str:
        """The whole reply as written: the opening, then what the model wrote (what the style rules check)."""
        if self.opening is None:
            return reply
        return f"{self.opening}\n\n{reply.lstrip()}".rstrip() if reply.strip() else self.opening

    def finish(self, reply: str, *, written: bool = False) -> str:
        """The reply as the user gets it: the opening and the model's text with its stated confidence no higher
        than the evidence allows, then the closing sentence if there is one. `written`: `reply` already opens
        with the opening (`written()`)."""
        reply = reply if written else self.written(reply)
        if self.confidence is not None:
            reply = cap(reply, *self.confidence)
        return f"{reply.rstrip()}\n\n{self.closing}" if self.closing else reply

    def streamed(self, partial: str) -> str:
        """What to show of a reply still being written: with a confidence to cap, its complete lines only, capped
        (so every text shown is the start of the next one and of `finish`'s: a stream only ever appends)."""
        if self.opening is not None:
            return self.written(partial)
        if self.confidence is None or self.confidence[0] == LEVELS[-1]:  # the highest allowed: nothing to lower
            return partial
        return cap(partial[:partial.rfind("\n") + 1], *self.confidence)

    @property
    def sources(self) -> list[Any]:
        """Every card the prompt showed: the teachings, then the story or fact cards."""
        return [*(self.teachings or []), *(self.cards or [])]


def build_turn(persona: Persona, history: list[Message], message: str, *, personality: str | None = None,
               image: Any | None = None, rng: random.Random | None = None, bank: bool = True,
               rejected: Sequence[str] = ()) -> Turn:
    """The one way a question becomes the model's prompt, for the app, the API, the CLI and `eval`:
    retrieve the cards (a person the user names picks whose), choose the personality, build the messages.

    `bank=False` asks as the persona did before it had a knowledge bank (its story instruction, no cards in
    the prompt); the cards retrieval picks are still returned, to check the reply against. `rejected`: the
    replies to this question that the user retried away from (Retry); written counsel is then the next best card
    that opened none of them (`RETRY_CHOICES` in all, then the best again)."""
    from krishna_ai.core.coaching import coaching_reply, the_task
    from krishna_ai.core.grounding import ground, teachings_for

    grounding = ground(persona, message, personality) if message else None
    who = grounding.person if grounding else persona.pick_personality(message, personality, rng)
    cards = grounding.cards if grounding else ([] if persona.knowledge else None)
    before = " ".join([text_of(m["content"]) for m in history if m.get("role") == "user"][-3:])  # a follow-up's
    written = persona.counsel is not None and persona.counsel.written and bank
    teachings = teachings_for(persona, message, before, RETRY_CHOICES if rejected and written else None
                              ) if persona.counsel else None
    if written and teachings:  # on Retry, the best card no rejected reply opened with
        teachings = ([c for c in teachings if not any(r.startswith(c.text) for r in rejected)] or teachings)[:1]
    asked = persona if bank or persona.knowledge is None else persona.model_copy(update={"knowledge": None})
    messages = build_messages(asked, history, message or IMAGE_ONLY_QUESTION, personality=who, image=image,
                              cards=cards if bank else None, teachings=teachings if bank else None)
    if persona.coach is not None and bank and the_task(message):  # the whole reply written from a checklist
        kind, reply = coaching_reply(persona, message, rejected, RETRY_CHOICES)
        return Turn(messages, who, cards, [kind], opening=reply, complete=True)
    closing = None
    k = persona.knowledge
    if k is not None and k.unknown_person and grounding and grounding.person and not cards and bank:
        closing = string.Template(k.unknown_person).safe_substitute(person=grounding.person)
    confidence = None
    if k is not None and k.confidence and grounding and grounding.evidence and image is None and bank:
        confidence = (allowed(grounding.evidence, k.confidence), grounding.evidence.runner_up)
    opening, complete = None, False
    if written and teachings:
        opening = teachings[0].text
        complete = persona.knowledge is not None and not cards  # a story-teller with no story to tell: done
        messages = [*messages, {"role": "assistant", "content": f"{opening}\n\n"}]
    return Turn(messages, who, cards, teachings, closing, confidence, opening, complete)


RETRY_CHOICES = 3
"""Written counsel cards a question's Retries go through (best first) before the best comes again."""


def opened(messages: list[Message]) -> bool:
    """Whether the last message is the start of the model's own turn (`Turn.opening`), which the model continues."""
    return len(messages) > 1 and messages[-1]["role"] == "assistant"


def render_gemma_turns(messages: list[Message], add_generation_prompt: bool = True) -> str:
    """Gemma's turn format, for Gemma 3 checkpoints without a chat template (no BOS: the tokenizer adds it).
    Asked for a generation prompt, a last assistant message (`opened`) is left open, verbatim, for the model to
    continue; without one (training), every turn is closed."""
    system = ""
    out = []
    for n, msg in enumerate(messages):
        role, text = msg["role"], text_of(msg["content"]).strip()
        if role == "system":
            system = text
            continue
        if role == "user" and system:
            text, system = f"{system}\n\n{text}", ""
        if n == len(messages) - 1 and add_generation_prompt and opened(messages):
            out.append(f"<start_of_turn>model\n{text_of(msg['content'])}")
            return "".join(out)
        out.append(f"<start_of_turn>{'model' if role == 'assistant' else 'user'}\n{text}<end_of_turn>\n")
    if add_generation_prompt:
        out.append("<start_of_turn>model\n")
    return "".join(out)


def render_prompt(messages: list[Message], tokenizer: Any, processor: Any | None = None, *,
                  add_generation_prompt: bool = True) -> str:
    """The prompt as text in the model's own chat format, BOS first: the processor's template, else the
    tokenizer's, else Gemma's turn format (Gemma 3 checkpoints such as the light tier carry no template).
    Training (`data.ConversationEncoder`) and every transformers engine render through this one function."""
    owner = processor if processor is not None else tokenizer
    if processor is not None or getattr(tokenizer, "chat_template", None):
        go_on = add_generation_prompt and opened(messages)  # the model continues its reply's opening
        text = owner.apply_chat_template(messages, add_generation_prompt=add_generation_prompt and not go_on,
                                         continue_final_message=go_on, tokenize=False)
    else:
        text = render_gemma_turns(messages, add_generation_prompt=add_generation_prompt)
    bos = getattr(tokenizer, "bos_token", None) or ""
    return text if not bos or text.startswith(bos) else bos + text


def fit_history(
    messages: list[Message],
    count_tokens: Callable[[list[Message]], int],
    budget: int,
) -> list[Message]:
    """Drop the oldest history turns (a user/assistant pair at a time) until the prompt fits `budget` tokens.

    `messages` is [system, *history, new user message] (the system part optional), or ends with the opening of the
    model's reply after that message (`opened`); the system part, the new message and the opening are never cut.
    The work is linear in the chat's length: the whole prompt is counted once, each
    pair once on its own, and from those counts (calibrated so the two ends are exact) the number of pairs to
    drop is estimated, then confirmed by counting the fitted prompt, which is about `budget` long — so a 5 MB
    chat costs two passes over its text, not one per dropped pair or per bisection step.
    """
    head = messages[:1] if len(messages) > 1 and messages[0]["role"] == "system" else []
    tail = 2 if opened(messages) and len(messages) > len(head) + 1 else 1  # the question, and the reply's opening
    history, last = list(messages[len(head):-tail]), messages[-tail:]

    def fitted(drop: int) -> list[Message]:
        return [*head, *history[2 * drop:], *last]

    total = count_tokens(fitted(0))
    if total <= budget:
        return fitted(0)
    pairs = (len(history) + 1) // 2
    floor = count_tokens(fitted(pairs))  # no history at all
    if floor > budget:
        raise GenerationError(
            f"the message is too long: the prompt needs {floor} tokens but the context leaves {budget} "
            "for it (shorten the message, or lower 'max new tokens')"
        )
    sizes = [count_tokens(history[2 * k:2 * k + 2]) for k in range(pairs)]
    # A pair counted alone carries the template's fixed tokens (BOS, the generation prompt): spread the
    # difference evenly, so the estimate is exact with every pair kept and with none.
    extra = (floor + sum(sizes) - total) / pairs
    kept, drop = float(floor), pairs
    while drop > 0 and kept + sizes[drop - 1] - extra <= budget:  # keep the newest pairs that fit
        drop -= 1
        kept += sizes[drop] - extra
    # Confirm with real counts (the estimate is off by a few tokens at the joins at most).
    while drop < pairs and count_tokens(fitted(drop)) > budget:
        drop += 1
    while drop > 0 and count_tokens(fitted(drop - 1)) <= budget:
        drop -= 1
    return fitted(drop)
