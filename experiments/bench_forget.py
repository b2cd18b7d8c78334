"""Forgetting on request: exact rollback vs retraining from scratch, and approximate unlearning.

A model learns a 200-interaction chat history (batches of 4, sparse updates, step journal on
disk). Then 5 records are forgotten, taken from the start, the middle or the end of the
history, each in a fresh process:

* ``exact``: undo every step from the first one that used a record, re-run the rest without it;
* ``retrain``: a fresh model learns the history without the 5 records (the reference that
  exact forgetting must equal bitwise -- checked here on the weights);
* ``approximate``: gradient ascent on the records with a retain term, no journal needed.

Reported: seconds, peak RSS, journal bytes on disk, and the verification figures: per-token NLL
of the forgotten records before/after against a never-seen control, and on retained records.

    python experiments/bench_forget.py [--model mcsd-small] [--history 200] [--forget 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, peak_rss_mb, print_table, run_child, write_json  # noqa: E402


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def child(args) -> dict:
    import torch

    from synclearn.data import chat_pairs
    from synclearn.learn import Learner
    from synclearn.memory import InteractionLog
    from synclearn.model import load_model

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp())
    model = load_model(args.model)
    log = InteractionLog(work / "log.db")
    pairs = chat_pairs(args.history, seed=7)
    ids = log.append_many([{"session_id": f"user{i % 10}", **p} for i, p in enumerate(pairs)])
    start = {"start": 0, "middle": args.history // 2, "end": args.history - args.forget}[args.where]
    doomed = set(ids[start : start + args.forget])
    skip = doomed if args.mode == "retrain" else set()
    journal = work / "journal" if args.mode == "exact" else None
    learner = Learner(model, log, journal=journal, neuron_fraction=args.fraction, seed=1)
    examples = [{"id": i, **p} for i, p in zip(ids, pairs)]
    t0 = time.perf_counter()
    for k in range(0, len(examples), args.batch):
        batch = [e for e in examples[k : k + args.batch] if e["id"] not in skip]
        if batch:
            learner.step(batch)
    learn_s = time.perf_counter() - t0
    out = {"mode": args.mode, "where": args.where, "learn_s": learn_s, "steps": learner.committed_steps}
    if args.mode == "retrain":
        out.update(seconds=learn_s, digest=weights_digest(model), peak_rss_mb=peak_rss_mb())
        return out
    journal_bytes = learner.journal.nbytes if learner.journal is not None else 0
    report = learner.forget(ids=sorted(doomed), mode=args.mode, max_unlearn_steps=args.unlearn_steps)
    out.update(seconds=report.seconds, digest=weights_digest(model), peak_rss_mb=peak_rss_mb(),
               journal_mb=journal_bytes / 2**20, rolled_back=report.steps_rolled_back, rerun=report.steps_rerun,
               unlearn_steps=report.unlearn_steps, nll_before=report.forgotten_nll_before,
               nll_after=report.forgotten_nll_after, control_nll=report.control_nll,
               retained_before=report.retained_nll_before, retained_after=report.retained_nll_after)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mcsd-small")
    ap.add_argument("--history", type=int, default=200)
    ap.add_argument("--forget", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--unlearn-steps", type=int, default=30)
    ap.add_argument("--places", nargs="+", default=["start", "middle", "end"])
    ap.add_argument("--out", default="experiments/out/bench_forget.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="exact", help=argparse.SUPPRESS)
    ap.add_argument("--where", default="middle", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    common = ["--model", args.model, "--history", str(args.history), "--forget", str(args.forget),
              "--batch", str(args.batch), "--fraction", str(args.fraction), "--unlearn-steps", str(args.unlearn_steps)]
    rows = []
    for where in args.places:
        for mode in ("exact", "retrain", "approximate"):
            rows.append(run_child(__file__, [*common, "--mode", mode, "--where", where]))
    for where in args.places:
        exact, retrain = (next(r for r in rows if r["where"] == where and r["mode"] == m) for m in ("exact", "retrain"))
        exact["equals_retrain"] = exact["digest"] == retrain["digest"]
        exact["vs_retrain_time"] = exact["seconds"] / retrain["seconds"]
    print(f"\n{args.model}: forget {args.forget} of {args.history} interactions (batches of {args.batch}, "
          f"{args.fraction:.0%} neuron budget)\n")
    print_table(rows, ["where", "mode", "seconds", "vs_retrain_time", "equals_retrain", "peak_rss_mb", "journal_mb",
                       "rolled_back", "rerun", "unlearn_steps", "nll_before", "nll_after", "control_nll",
                       "retained_before", "retained_after"])
    path = write_json(args.out, {"config": vars(args), "environment": environment(), "results": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
