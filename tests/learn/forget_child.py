"""Child process for the crash test: learn, checkpoint, then forget (killed at a random moment).

Usage: python forget_child.py DIR [--no-forget | --kill-before-persist | --kill-after-persist]
Prints "READY" once the pre-forget checkpoint is on disk, then "DONE" after the forget. The
--kill-* flags make the child SIGKILL itself right before / after the forget's checkpoint.
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from synclearn.chat.checkpoint import CheckpointStore  # noqa: E402
from synclearn.data import chat_pairs  # noqa: E402
from synclearn.learn import Learner  # noqa: E402
from synclearn.memory import InteractionLog  # noqa: E402
from synclearn.model import MCSDConfig, build_model  # noqa: E402

CFG = dict(d_model=32, n_layers=3, n_channels=4, d_ff=128, predictor_rank=8, chunk_size=16)


def make_learner(root: Path, model):
    return Learner(model, InteractionLog(root / "log.db"), journal=root / "journal", neuron_fraction=0.2, seed=1)


def main() -> None:
    root = Path(sys.argv[1])
    model = build_model(MCSDConfig(**CFG), seed=0)
    learner = make_learner(root, model)
    ids = learner.log.append_many([{"session_id": f"user{i % 3}", **p} for i, p in enumerate(chat_pairs(12, seed=3))])
    rows = learner.log.get_many(ids)
    examples = [{"id": r["id"], "prompt": r["prompt"], "response": r["response"]} for r in rows]
    for i in range(0, 12, 2):
        learner.step(examples[i : i + 2])
    store = CheckpointStore(root / "ckpt")
    store.save(model, learner, base="custom")

    def persist():
        if "--kill-before-persist" in sys.argv:
            os.kill(os.getpid(), signal.SIGKILL)
        store.save(model, learner, base="custom")
        if "--kill-after-persist" in sys.argv:
            os.kill(os.getpid(), signal.SIGKILL)

    learner.set_persist(persist)
    print("READY", flush=True)
    if "--no-forget" not in sys.argv:
        learner.forget(session_id="user1")
        print("DONE", flush=True)


if __name__ == "__main__":
    main()
