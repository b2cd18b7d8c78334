"""The pretraining mix of a base model that knows how to chat: a stream of generated
conversations and built-in text.

Facts taught in chat can only be recalled by a model that already knows the chat template and
the question/answer patterns. The mix teaches exactly that, with *random* values, so it
teaches no fact: what ``Kado``'s pet is stays for the learner to learn later.

* fact questions (``synclearn.data.facts``): a random person, attribute and question form,
  answered with a random value of the attribute, e.g. ``What's the pet of Kado?`` ->
  ``It's a parrot.``;
* small talk (``synclearn.data.smalltalk``);
* the built-in text (``synclearn.data.builtin_text``), a few lines at a time.

Conversations hold 1-3 turns in the chat template; half of them open with ``<|bos|>`` (how
a ChatSession starts one) and half do not (how the learner sees a logged turn), so the model
answers the same either way.
"""

from __future__ import annotations

import random

import torch

from synclearn.data.builtin import builtin_text
from synclearn.data.facts import ATTRIBUTES, QUESTION_FORMS, WORLD_SIZE, Fact, make_name, random_fact, world_facts
from synclearn.data.smalltalk import smalltalk_turn
from synclearn.model.tokenizer import ByteTokenizer


def fact_turn(rng: random.Random, world: tuple[Fact, ...] = (), world_share: float = 0.0) -> dict[str, str]:
    """A question about a fact and its answer: with probability ``world_share`` a fact of the
    fixed ``world``, else a random fact (random value)."""
    fact = rng.choice(world) if world and rng.random() < world_share else random_fact(rng)
    return {"prompt": fact.question(rng.randrange(len(QUESTION_FORMS))), "response": fact.answer()}


def recall_turns(rng: random.Random) -> list[dict[str, str]]:
    """In-context recall: the user states 2-3 facts about different people with the same
    attribute, then asks about one of them; answering needs the asked name told apart from
    the others, which is the name feature a learner later binds new facts to."""
    attribute = rng.choice(list(ATTRIBUTES))
    people = [Fact(make_name(rng), attribute, rng.choice(ATTRIBUTES[attribute])) for _ in range(rng.randint(2, 3))]
    turns = [{"prompt": f"Remember: {f.statement()}", "response": "Got it."} for f in people]
    asked = rng.choice(people)
    return turns + [{"prompt": asked.question(rng.randrange(len(QUESTION_FORMS))), "response": asked.answer()}]


def chat_mix(n_tokens: int, seed: int = 0, *, fact_share: float = 0.6, smalltalk_share: float = 0.25,
             world_share: float = 0.0, n_world: int = WORLD_SIZE, recall_share: float = 0.0) -> torch.Tensor:
    """A stream of at least ``n_tokens`` tokens of the mix, as a [N] int64 tensor.

    Args:
        n_tokens: minimum length of the stream.
        seed: the generator's seed (same seed, same stream).
        fact_share: share of documents that are fact-question conversations.
        smalltalk_share: share of small-talk conversations; the rest is built-in text.
        world_share: share of fact questions about the fixed world (``world_facts(n_world)``),
            whose answers never change; the rest have random values.
        recall_share: share of fact conversations that are in-context recall (``recall_turns``).
    """
    if not (0 <= fact_share and 0 <= smalltalk_share and fact_share + smalltalk_share <= 1):
        raise ValueError(f"fact_share={fact_share!r} and smalltalk_share={smalltalk_share!r} must be >= 0 "
                         "with a sum <= 1 (the rest is built-in text)")
    if not 0 <= world_share <= 1 or n_world < 1:
        raise ValueError(f"world_share={world_share!r} must be in [0, 1] and n_world={n_world!r} >= 1")
    world = world_facts(n_world) if world_share else ()
    tok = ByteTokenizer()
    rng = random.Random(f"chat-mix-{seed}")
    lines = [line for line in builtin_text().splitlines() if line.strip()]
    ids: list[int] = []
    while len(ids) < n_tokens:
        u = rng.random()
        if u < fact_share + smalltalk_share:
            if rng.random() < 0.5:
                ids.append(tok.BOS)
            if u < fact_share and rng.random() < recall_share:
                pairs = recall_turns(rng)
            elif u < fact_share:
                pairs = [fact_turn(rng, world, world_share) for _ in range(rng.randint(1, 3))]
            else:
                pairs = [smalltalk_turn(rng) for _ in range(rng.randint(1, 3))]
            for pair in pairs:
                p, r = tok.turn(pair["prompt"], pair["response"])
                ids += p + r
        else:
            start = rng.randrange(len(lines))
            ids += tok.encode("\n".join(lines[start : start + rng.randint(1, 4)]), bos=True, eos=True)
    return torch.tensor(ids, dtype=torch.long)
