"""The built-in corpus: a short shipped text plus generated question/answer chat turns.

It is small on purpose: enough to show that a model learns the byte statistics and the
chat layout in a minute on two cores, and to give tests and demos data with no download.
"""

from __future__ import annotations

import random
from importlib import resources

import torch

from synclearn.model.tokenizer import ByteTokenizer

_NAMES = ["Ada", "Bram", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivo", "Juno", "Kai", "Lena"]
_THINGS = {
    "favorite color": ["red", "blue", "green", "amber", "violet", "teal", "gold", "silver"],
    "pet": ["a cat", "a dog", "a parrot", "two fish", "a rabbit", "a turtle"],
    "home town": ["Oslo", "Lima", "Kyoto", "Porto", "Quito", "Accra", "Hanoi", "Perth"],
    "favorite food": ["soup", "rice", "bread", "figs", "noodles", "olives", "curry"],
}


def builtin_text() -> str:
    """The shipped plain-text corpus (a few kilobytes of English prose)."""
    return resources.files("synclearn.data").joinpath("corpus.txt").read_text(encoding="utf-8")


def chat_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` generated question/answer turns about made-up people, e.g.
    ``{"prompt": "What is Ada's pet?", "response": "Ada's pet is a cat."}``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name, (what, values) = rng.choice(_NAMES), rng.choice(list(_THINGS.items()))
        value = rng.choice(values)
        if rng.random() < 0.5:
            out.append({"prompt": f"What is {name}'s {what}?", "response": f"{name}'s {what} is {value}."})
        else:
            out.append({"prompt": f"Remember: {name}'s {what} is {value}.", "response": "Got it, I will remember that."})
    return out


def encode_corpus(n_chat: int = 400, seed: int = 0) -> torch.Tensor:
    """The built-in text and ``n_chat`` chat turns as one long [N] int64 token stream."""
    tok = ByteTokenizer()
    ids = tok.encode(builtin_text(), bos=True, eos=True)
    for pair in chat_pairs(n_chat, seed):
        p, r = tok.turn(pair["prompt"], pair["response"])
        ids += p + r
    return torch.tensor(ids, dtype=torch.long)
