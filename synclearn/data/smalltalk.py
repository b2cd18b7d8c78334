"""Small talk: generated everyday chat turns with a checkable answer.

They are the filler of the chat-facts benchmark (what users say between teaching a fact and
asking it again) and part of the pretraining mix, so the base model has a sensible reply
to each. Every turn is ``{"prompt": str, "response": str}``:

    Hello!                           -> Hello! How can I help?
    What is 3 plus 4?                -> 3 plus 4 is 7.
    Repeat after me: green river     -> green river
    Count to 5.                      -> 1, 2, 3, 4, 5.
    Say moon in capitals.            -> MOON
    What comes after Tuesday?        -> Wednesday comes after Tuesday.
"""

from __future__ import annotations

import random

_GREETINGS = (
    ("Hello!", "Hello! How can I help?"),
    ("Hi there.", "Hi! What can I do for you?"),
    ("Good morning.", "Good morning to you too."),
    ("Thanks!", "You are welcome."),
    ("Thank you for the help.", "Glad I could help."),
    ("How are you?", "I am fine, thank you."),
    ("Goodbye.", "Goodbye, see you soon."),
    ("Who are you?", "I am a small chat model that learns as we talk."),
)
_WORDS = ("river", "stone", "green", "moon", "lamp", "quiet", "bread", "north", "cloud", "paper", "salt",
          "window", "garden", "silver", "train", "music", "apple", "winter", "bridge", "forest")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if rng.random() < 0.5:
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    a, b = max(a, b), min(a, b)
    return f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}."


def _echo(rng: random.Random) -> tuple[str, str]:
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
    return f"Repeat after me: {words}", words


def _count(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(2, 8)
    return f"Count to {n}.", ", ".join(str(i) for i in range(1, n + 1)) + "."


def _capitals(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(_WORDS)
    return f"Say {word} in capitals.", word.upper()


def _next_day(rng: random.Random) -> tuple[str, str]:
    i = rng.randrange(len(_DAYS))
    return f"What comes after {_DAYS[i]}?", f"{_DAYS[(i + 1) % 7]} comes after {_DAYS[i]}."


_KINDS = (lambda rng: rng.choice(_GREETINGS), _arithmetic, _echo, _count, _capitals, _next_day)


def smalltalk_turn(rng: random.Random) -> dict[str, str]:
    """One random small-talk turn."""
    prompt, response = rng.choice(_KINDS)(rng)
    return {"prompt": prompt, "response": response}


def smalltalk(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` small-talk turns (deterministic in ``seed``)."""
    rng = random.Random(f"smalltalk-{seed}")
    return [smalltalk_turn(rng) for _ in range(n)]
