"""Serving latency with the learner detached vs attached, and the learner's rate under load.

A Poisson stream of chat requests (each a fresh conversation: a short prompt, a fixed
number of new tokens) is served by one worker thread over one model. At each serving load
(the fraction of time the server is busy, set from a calibrated service time) the stream
runs twice -- learner detached, then attached to the session (sparse updates, learning from
the served turns plus replay) -- and reports per-token latency p50/p99, time to first token
(from arrival, queueing included) p50/p99, and the learner's committed steps/s, next to the
learner's standalone rate (no serving).

Goals (issue 5): attached p50 <= 1.10x and p99 <= 1.25x of detached; the learner keeps
>= 50% of its standalone rate at 50% serving load. On CUDA the learner uses its own stream.

    python experiments/bench_serve_learn.py [--model mcsd-small] [--loads 0.25 0.5] [--seconds 30]
                                            [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, print_table, write_json  # noqa: E402

from synclearn.chat import ChatSession  # noqa: E402
from synclearn.data import chat_pairs  # noqa: E402
from synclearn.learn import Learner  # noqa: E402
from synclearn.memory import InteractionLog  # noqa: E402
from synclearn.model import load_model  # noqa: E402


def serve_stream(session, prompts, rate_hz, seconds, seed, serve_threads):
    """Poisson arrivals for ``seconds``, served in order by one worker; each request is a
    fresh conversation on ``session``. Returns per-token latencies, TTFTs, busy fraction."""
    rng = np.random.default_rng(seed)
    jobs: queue.Queue = queue.Queue()
    token_lat, ttft, busy = [], [], [0.0]

    def worker():
        torch.set_num_threads(serve_threads)
        while True:
            job = jobs.get()
            if job is None:
                return
            arrived, prompt = job
            session.reset()
            t0 = time.perf_counter()
            reply = session.send(prompt)
            busy[0] += time.perf_counter() - t0
            ttft.append(t0 - arrived + reply.ttft_s)
            token_lat.extend(reply.token_times_s)

    thread = threading.Thread(target=worker)
    thread.start()
    start = time.perf_counter()
    t, i = start, 0
    while True:
        t += rng.exponential(1.0 / rate_hz)
        if t - start > seconds:
            break
        time.sleep(max(0.0, t - time.perf_counter()))
        jobs.put((time.perf_counter(), prompts[i % len(prompts)]))
        i += 1
    jobs.put(None)
    thread.join()
    wall = time.perf_counter() - start
    return np.array(token_lat), np.array(ttft), busy[0] / wall, i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mcsd-small")
    ap.add_argument("--loads", type=float, nargs="+", default=[0.25, 0.5])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--serve-threads", type=int, default=1)
    ap.add_argument("--learn-threads", type=int, default=1)
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--no-yield", action="store_true", help="learner steps do not pause for requests in flight")
    ap.add_argument("--concurrent", action="store_true",
                    help="the learner never waits for idleness (idle_only=False): on CUDA the stream priorities "
                         "alone put serving first")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (on CUDA the learner runs on its own stream)")
    ap.add_argument("--dtype", default="float32", help="model weights: float32, bfloat16, ...")
    ap.add_argument("--out", default="experiments/out/bench_serve_learn.json")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device={args.device}: CUDA is not available here")

    model = load_model(args.model, dtype=args.dtype, device=args.device)
    prompts = [p["prompt"] for p in chat_pairs(64, seed=1)]
    tmp = Path(tempfile.mkdtemp())
    seed_log = InteractionLog(tmp / "seed.db")
    for pair in chat_pairs(64, seed=2):
        seed_log.append(session_id="seed", **pair)
    learner = Learner(model, seed_log, neuron_fraction=args.fraction)

    # calibrate: mean service time of one request, learner detached
    torch.set_num_threads(args.serve_threads)
    t0 = time.perf_counter()
    for p in prompts[:8]:
        ChatSession(model, max_new_tokens=args.new_tokens).send(p)
    service_s = (time.perf_counter() - t0) / 8

    # the learner alone: steps/s with nothing being served (learning from the seed log + replay)
    idle_session = ChatSession(model, seed_log)
    handle = learner.attach(idle_session, learn_threads=args.learn_threads, idle_replay=True, poll_s=0.01)
    time.sleep(min(args.seconds, 20))
    alone = handle.detach()
    alone_rate_wall = alone["steps"] / min(args.seconds, 20)

    rows = []
    for load in args.loads:
        rate = load / service_s
        for mode in ("detached", "attached"):
            log = InteractionLog(tmp / f"serve-{load}-{mode}.db")
            session = ChatSession(model, log, max_new_tokens=args.new_tokens)
            handle = None
            if mode == "attached":  # learns from what is served, plus replay of the seed log's lessons
                handle = learner.attach(session, learn_threads=args.learn_threads, idle_replay=True,
                                        poll_s=0.01, max_defer_s=1.0, yield_to_serving=not args.no_yield,
                                        idle_only=not args.concurrent)
            lat, ttft, busy, n = serve_stream(session, prompts, rate, args.seconds, seed=int(load * 100),
                                              serve_threads=args.serve_threads)
            status = handle.detach() if handle else None
            row = {"load": load, "mode": mode, "requests": n, "busy": busy,
                   "tok_p50_ms": 1e3 * float(np.percentile(lat, 50)), "tok_p99_ms": 1e3 * float(np.percentile(lat, 99)),
                   "ttft_p50_ms": 1e3 * float(np.percentile(ttft, 50)), "ttft_p99_ms": 1e3 * float(np.percentile(ttft, 99))}
            if status:
                row["learn_steps_s"] = status["steps"] / args.seconds
                row["learn_vs_alone"] = row["learn_steps_s"] / alone_rate_wall if alone_rate_wall else 0.0
            rows.append(row)
            log.close()

    goals = {}
    for load in args.loads:
        det = next(r for r in rows if r["load"] == load and r["mode"] == "detached")
        att = next(r for r in rows if r["load"] == load and r["mode"] == "attached")
        att["p50_ratio"], att["p99_ratio"] = att["tok_p50_ms"] / det["tok_p50_ms"], att["tok_p99_ms"] / det["tok_p99_ms"]
        goals[f"p50<=1.10x@{load}"] = {"value": att["p50_ratio"], "target": 1.10, "met": att["p50_ratio"] <= 1.10}
        goals[f"p99<=1.25x@{load}"] = {"value": att["p99_ratio"], "target": 1.25, "met": att["p99_ratio"] <= 1.25}
        if abs(load - 0.5) < 1e-9:
            goals["learner>=50%@0.5"] = {"value": att["learn_vs_alone"], "target": 0.5, "met": att["learn_vs_alone"] >= 0.5}

    print(f"\n{args.model} ({model.num_parameters() / 1e6:.1f}M, {args.dtype} on {args.device}), "
          f"{args.new_tokens} new tokens per request, "
          f"service time {service_s * 1e3:.0f} ms, serve threads {args.serve_threads}, learn threads {args.learn_threads}, "
          f"learner {'does not yield' if args.no_yield else 'yields at layer boundaries'} to requests in flight"
          f"{', runs concurrently (idle_only=False)' if args.concurrent else ''}")
    print(f"learner alone: {alone_rate_wall:.2f} steps/s ({alone['steps']} steps)\n")
    print_table(rows, ["load", "mode", "requests", "busy", "tok_p50_ms", "tok_p99_ms", "p50_ratio", "p99_ratio",
                       "ttft_p50_ms", "ttft_p99_ms", "learn_steps_s", "learn_vs_alone"])
    print()
    for name, g in goals.items():
        print(f"goal {name}: {g['value']:.3f} -> {'met' if g['met'] else 'NOT met'}")
    path = write_json(args.out, {"config": vars(args), "environment": environment(), "service_s": service_s,
                                 "learner_alone_steps_s": alone_rate_wall, "results": rows, "goals": goals})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
