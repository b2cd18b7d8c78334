"""The chat-facts benchmark: facts taught in chat while the learner is attached, probed later.

Simulated users talk to a :class:`~synclearn.chat.ChatSession` with the learner attached.
Some turns teach a fact: the user asks a question the model cannot know ("What is Kado's
pet?") and corrects the answer ("It's a parrot."); the turn is logged with that
correction, so what the learner takes from the log is exactly the fact (the replay builder
trains on a row's correction when it has one). The other turns are small talk
(:mod:`synclearn.data.smalltalk`), logged and learned like any served turn; with
``filler_feedback="correct"`` the users also correct wrong small-talk replies (as they would
a wrong answer), with ``"none"`` the learner learns the model's own replies as they are,
mistakes included (a harsher setting: learning from its own errors, a model drifts). Each fact is
probed (:mod:`synclearn.eval.recall`: exact match of a fresh conversation's greedy reply, and
rank of the true value among its attribute's values) ``d`` interactions after it was taught,
for every ``d`` in ``delays``, with the teaching question and with another question form
(generalization: ``recall_other_d{d}``).

What else moved (:mod:`synclearn.eval.retention`, measured on the model before the stream and
after it, before the latency measurement): held-out text and chat NLL, well-formed answers
about people nobody taught, small-talk replies, locality (untaught people's answers
unchanged), and the share of every plastic layer's neurons still free to learn.

Reproducible: the attached learner's replay draws and the log's learned/rehearsed times read
a clock the benchmark controls (``turn_seconds`` per interaction), not the wall clock; with
the pacing below, the same seed gives the same figures run to run.

The stream: the facts are split into ``n_groups`` consecutive groups (the "tasks"); each
fact is taught once, followed by ``gap`` small-talk turns; after the last fact, small talk
continues until every fact has reached the longest delay. Every fact is probed before the
stream (the untrained baseline) and at the end of each group (the last group ends with the
stream), which gives the accuracy matrix R[i, j] (recall of group j after group i) behind
ACC, BWT, FWT and forgetting (:mod:`synclearn.eval.metrics`).

Pacing: after each turn the user waits until the learner has taken that turn in (its row
is marked learned) before the next one, as a user reads a reply before answering. So the
learner makes the same steps on any machine and in any load, and a delay of ``d``
interactions is ``d`` learning steps. Serving latency with the learner attached vs detached
is measured separately at the end (:mod:`synclearn.eval.latency`), with the learner busy
throughout.

The benchmark contract (every ``conf/benchmark/*.yaml`` target has this signature)::

    run(model, learner, log, out_dir, *, memory, serve, seed, progress, **options) -> metrics

``memory`` is a :class:`~synclearn.bench.experiment.MemorySetup` (replay policy and ratio,
batch size, consolidation, fading), ``serve`` a :class:`~synclearn.bench.experiment.ServeSettings`;
``metrics`` holds flat scalars, nested series, and optionally ``summary`` (lines to print).
Artifacts go into ``out_dir``: ``probes.csv``, ``retention.png``, ``accuracy_matrix.png``,
``forgetting.png``, ``latency.png``.
"""

from __future__ import annotations

import csv
import random
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from synclearn.data.facts import QUESTION_FORMS, Fact, generate_facts, load_facts
from synclearn.data.smalltalk import smalltalk
from synclearn.eval import metrics as M
from synclearn.eval.latency import measure_latency
from synclearn.eval.recall import Probe, probe_fact


class CorrectingLog:
    """The interaction log as the chat front end writes it: when the user knows the right answer
    to a turn and the reply differs, the turn is appended with the user's correction in the same
    transaction, so a learner never sees it uncorrected. Everything else is the wrapped
    :class:`~synclearn.memory.InteractionLog`."""

    def __init__(self, log: Any) -> None:
        self._log, self._expected = log, None
        self.corrected = 0

    def expect(self, prompt: str, correction: str) -> None:
        """The next append of ``prompt`` carries ``correction`` unless the reply already equals it."""
        self._expected = (prompt, correction)

    def append(self, session_id: str, prompt: str, response: str, **meta: Any) -> int:
        if self._expected is not None and self._expected[0] == prompt:
            if response.strip() != self._expected[1]:
                meta["feedback_correction"] = self._expected[1]
                self.corrected += 1
            self._expected = None
        return self._log.append(session_id=session_id, prompt=prompt, response=response, **meta)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def build_stream(n_facts_taught: int, n_groups: int, gap: int, max_delay: int) -> tuple[list[int | None], list[int]]:
    """The stream of turns and the group ends.

    Returns:
        turns: per interaction, the index of the fact it teaches or None (small talk).
        group_end: [n_groups] interaction count after which each group is complete.
    """
    bounds = np.linspace(0, n_facts_taught, n_groups + 1).round().astype(int)
    turns: list[int | None] = []
    group_end = []
    for g in range(n_groups):
        for f in range(bounds[g], bounds[g + 1]):
            turns += [f] + [None] * gap
        group_end.append(len(turns))
    last_teach = max(i for i, f in enumerate(turns) if f is not None) + 1
    turns += [None] * max(0, last_teach + max_delay - len(turns))
    group_end[-1] = len(turns)
    return turns, group_end


def run(model: Any, learner: Any, log: Any, out_dir: str | Path, *, memory: Any, serve: Any, seed: int = 0,
        progress: bool = True, n_facts: int = 40, n_groups: int = 5, gap: int = 4,
        delays: Sequence[int] = (0, 10, 100, 1000), facts_file: str | None = None, probe_form: str = "same",
        conversation_turns: int = 4, filler_feedback: str = "correct", latency_prompts: int = 16,
        rank: bool = True, wait_timeout_s: float = 120.0, turn_seconds: float = 1.0,
        retention_probes: int = 32) -> dict[str, Any]:
    """Run the benchmark (see the module docstring for the contract).

    Args:
        n_facts: facts to teach (generated from ``seed``), or the first ``n_facts`` of ``facts_file``
            (a JSONL file of ``{"name", "attribute", "value"}``; None or 0 = all of it).
        n_groups: consecutive groups of facts (tasks of the accuracy matrix).
        gap: small-talk turns after each teaching turn.
        delays: probe each fact this many interactions after it was taught.
        probe_form: "same" (probe with the teaching question) or "paraphrase" (another form).
        conversation_turns: turns per simulated conversation (the session resets between them).
        filler_feedback: "correct" (users correct wrong small-talk replies) or "none".
        latency_prompts: prompts served per condition in the latency measurement (0 = skip).
        rank: also score recall by ranking the candidate answers.
        wait_timeout_s: longest wait for the learner to take in one turn.
        turn_seconds: simulated seconds per interaction: the clock of replay and the log.
        retention_probes: held-out probes per kind for base retention (0 = skip).
    """
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    delays = sorted({int(d) for d in delays})
    if not delays or delays[0] < 0 or n_groups < 1 or gap < 0 or conversation_turns < 1:
        raise ValueError(f"chat_facts: need delays >= 0 (got {delays}), n_groups >= 1 (got {n_groups}), "
                         f"gap >= 0 (got {gap}), conversation_turns >= 1 (got {conversation_turns})")
    if probe_form not in ("same", "paraphrase"):
        raise ValueError(f"probe_form={probe_form!r} (expected 'same' or 'paraphrase')")
    if filler_feedback not in ("correct", "none"):
        raise ValueError(f"filler_feedback={filler_feedback!r} (expected 'correct' or 'none')")
    if facts_file:
        facts = load_facts(facts_file)[: n_facts or None]
    else:
        facts = generate_facts(n_facts, seed=seed)
    if len(facts) < n_groups:
        raise ValueError(f"chat_facts: {len(facts)} facts cannot fill n_groups={n_groups} groups")
    rng = random.Random(f"chat-facts-{seed}")
    forms = [rng.randrange(len(QUESTION_FORMS)) for _ in facts]
    teach_q = [f.question(k) for f, k in zip(facts, forms)]
    paraphrase_q = [f.question((k + 1) % len(QUESTION_FORMS)) for f, k in zip(facts, forms)]
    probe_q, other_q = (teach_q, paraphrase_q) if probe_form == "same" else (paraphrase_q, teach_q)
    turns, group_end = build_stream(len(facts), n_groups, gap, delays[-1])
    filler = iter(smalltalk(len(turns), seed=seed))
    group_of = np.searchsorted(np.linspace(0, len(facts), n_groups + 1).round()[1:], np.arange(len(facts)), "right")

    front = CorrectingLog(log)
    session = serve.session(model, front)
    prober = serve.session(model, None)
    cache: dict[tuple[int, int], Probe] = {}

    def probe(t: int, f: int) -> Probe:
        if (t, f) not in cache:
            cache[(t, f)] = probe_fact(model, prober, facts[f], probe_q[f], rank=rank)
        return cache[(t, f)]

    keep = None
    if retention_probes:
        from synclearn.eval.retention import RetentionProbe

        keep = RetentionProbe(seed=seed, n_people=retention_probes, n_chat=retention_probes,
                              exclude_names={f.name for f in facts}, max_new_tokens=serve.max_new_tokens)
        kept_before = keep.measure(model)
    clock_turn = [0]

    def clock() -> float:  # the learner only runs while the user waits on turn t: a deterministic "now"
        return t_clock0 + turn_seconds * clock_turn[0]

    t_clock0 = time.time()

    def evaluate(t: int) -> tuple[list[float], list[float]]:
        ps = [probe(t, f) for f in range(len(facts))]
        by_group = [[p for p, g in zip(ps, group_of) if g == j] for j in range(n_groups)]
        return ([float(np.mean([p.exact for p in grp])) for grp in by_group],
                [float(np.mean([p.ranked for p in grp])) for grp in by_group])

    baseline_exact, baseline_rank = evaluate(0)
    R_exact, R_rank = [], []
    taught_at: dict[int, int] = {}
    due: dict[int, list[tuple[int, int]]] = {}
    records: list[dict[str, Any]] = []
    serving_ms: list[float] = []
    handle = learner.attach(session, **memory.attach_options(), **serve.attach_options(), clock=clock)
    bar = _progress(len(turns), progress)
    try:
        for t, fact_index in enumerate(turns, start=1):
            clock_turn[0] = t
            if (t - 1) % conversation_turns == 0:
                session.reset()
            if fact_index is None:
                turn = next(filler)
                if filler_feedback == "correct":
                    front.expect(turn["prompt"], turn["response"])
                reply = session.send(turn["prompt"])
            else:
                front.expect(teach_q[fact_index], facts[fact_index].answer())
                reply = session.send(teach_q[fact_index])
                taught_at[fact_index] = t
                for d in delays:
                    due.setdefault(t + d, []).append((fact_index, d))
            serving_ms.extend(1000 * s for s in reply.token_times_s)
            _wait_learned(log, reply.interaction_id, handle, wait_timeout_s)
            for f, d in due.pop(t, []):
                p = probe(t, f)
                o = probe_fact(model, prober, facts[f], other_q[f], rank=rank)
                records.append({"t": t, "fact": f, "group": int(group_of[f]), "delay": d, "exact": int(p.exact),
                                "ranked": int(p.ranked), "rank": p.rank, "version": p.version, "reply": p.reply,
                                "exact_other": int(o.exact), "ranked_other": int(o.ranked), "reply_other": o.reply})
            if t in group_end:
                ex, rk = evaluate(t)
                R_exact.append(ex)
                R_rank.append(rk)
            if bar is not None:
                bar.update(1)
                if records and t % 50 == 0:
                    bar.set_postfix(recall=f"{np.mean([r['exact'] for r in records]):.0%}",
                                    steps=handle.status()["steps"])
    finally:
        status = handle.detach()
        if bar is not None:
            bar.close()
    stream_s = time.perf_counter() - t_start
    kept = {}
    if keep is not None:
        from synclearn.eval.retention import compare

        kept_after = keep.measure(model)
        kept = compare(kept_before, kept_after)
    kept.update({f"free_share_l{layer}": share for layer, share in learner.free_share().items()})
    kept.update({f"learning_share_l{layer}": share for layer, share in learner.learning_share().items()})
    lat = measure_latency(session, learner, [p["prompt"] for p in smalltalk(latency_prompts, seed=seed + 1)],
                          attach_options={**memory.attach_options(), **serve.attach_options()}) \
        if latency_prompts else None
    results = _results(out_dir, facts, records, R_exact, R_rank, baseline_exact, baseline_rank, delays, status, lat,
                       serving_ms, len(turns), stream_s, learner)
    results["corrected_turns"] = front.corrected
    results.update(kept)
    if keep is not None:
        results["summary"].insert(3, (
            f"base retention: held-out text NLL {100 * kept['text_nll_change']:+.1f}%, chat NLL "
            f"{100 * kept['chat_nll_change']:+.1f}% (small talk {100 * kept['smalltalk_nll_change']:+.1f}%, people "
            f"{100 * kept['people_nll_change']:+.1f}%; answer entropy about untaught people "
            f"{kept['untaught_entropy_after']:.2f} vs {kept['untaught_entropy_before']:.2f} nats), well-formed answers "
            f"about untaught people {kept['format_share_after']:.0%} (base {kept['format_share_before']:.0%}), "
            f"locality {kept['locality']:.0%}, small talk {kept['smalltalk_exact_after']:.0%} "
            f"(base {kept['smalltalk_exact_before']:.0%})"))
    shares = [v for k, v in kept.items() if k.startswith("free_share_l")]
    if shares:
        results["free_share_min"] = min(shares)
        learning = min(v for k, v in kept.items() if k.startswith("learning_share_l"))
        results["learning_share_min"] = learning
        results["summary"].insert(3, f"neurons free to learn at the end: {min(shares):.0%} (least free plastic layer; "
                                     f"{learning:.0%} free and at >= half the learning rate)")
    return results


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="chat-facts", unit="turn", mininterval=1.0)


def _wait_learned(log: Any, rid: int, handle: Any, timeout: float) -> None:
    """Block until the learner has taken row ``rid`` in (marked learned) or set it aside as
    unlearnable (e.g. an empty reply, which teaches nothing)."""
    deadline = time.monotonic() + timeout
    set_aside = getattr(getattr(handle, "builder", None), "set_aside", ())
    def pending(row: dict[str, Any]) -> bool:
        has_lesson = bool(row["response"] or row["feedback_correction"])  # an empty reply is never offered
        return row["learned_at"] is None and has_lesson and rid not in set_aside

    while (row := log.get(rid)) is not None and pending(row):
        if not handle.attached:
            raise RuntimeError(f"the learner stopped before learning interaction {rid}: {handle.status()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the learner did not take in interaction {rid} within {timeout}s: {handle.status()}")
        time.sleep(0.002)


def _results(out_dir: Path, facts: list[Fact], records: list[dict[str, Any]], R_exact: list, R_rank: list,
             b_exact: list, b_rank: list, delays: list[int], status: dict, lat: Any, serving_ms: list[float],
             interactions: int, stream_s: float, learner: Any) -> dict[str, Any]:
    """Metrics, probes.csv and the plots."""
    from synclearn.eval import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "probes.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["t", "fact", "group", "delay", "exact", "ranked", "rank", "version",
                                               "reply", "exact_other", "ranked_other", "reply_other", "name",
                                               "attribute", "value"])
        writer.writeheader()
        for r in records:
            writer.writerow({**r, **facts[r["fact"]].to_dict()})
    d = np.array([r["delay"] for r in records], dtype=float)
    exact = np.array([r["exact"] for r in records], dtype=float)
    ranked = np.array([r["ranked"] for r in records], dtype=float)
    exact_other = np.array([r["exact_other"] for r in records], dtype=float)
    ranked_other = np.array([r["ranked_other"] for r in records], dtype=float)
    out: dict[str, Any] = {"facts": len(facts), "interactions": interactions, "probes": len(records)}
    for k in delays:
        sel = d == k
        out[f"recall_d{k}"] = float(exact[sel].mean()) if sel.any() else float("nan")
        out[f"rank_recall_d{k}"] = float(ranked[sel].mean()) if sel.any() else float("nan")
        out[f"recall_other_d{k}"] = float(exact_other[sel].mean()) if sel.any() else float("nan")
        out[f"rank_recall_other_d{k}"] = float(ranked_other[sel].mean()) if sel.any() else float("nan")
    curves = {"exact match": M.retention_by_delay(d, exact), "rank among candidates": M.retention_by_delay(d, ranked)}
    fits = {"exact match": M.fit_half_life(d, exact), "rank among candidates": M.fit_half_life(d, ranked)}
    out["half_life"] = fits["exact match"].half_life
    out["half_life_rank"] = fits["rank among candidates"].half_life
    out.update(M.summarize(R_exact, baseline=b_exact))
    out.update({f"{k}_rank": v for k, v in M.summarize(R_rank, baseline=b_rank).items()})
    out.update({"learner_steps": status["steps"], "learner_skipped": status["skipped"],
                "learner_errors": len(status["errors"]), "learning_s": status["learning_s"],
                "training_state_bytes": learner.training_state_bytes(), "stream_s": stream_s,
                "token_ms_p50_stream": float(np.median(serving_ms)) if serving_ms else float("nan")})
    names = [f"g{j}" for j in range(len(R_exact))]
    paths = {"retention": plots.plot_retention_curves(curves, out_dir / "retention.png", half_lives={
                 k: v.half_life for k, v in fits.items()}, xlabel="delay (later interactions)",
                 title="Recall of taught facts by delay"),
             "accuracy_matrix": plots.plot_accuracy_matrix(R_exact, out_dir / "accuracy_matrix.png", task_names=names,
                                                           title="Exact-match recall R[i, j] by fact group"),
             "forgetting": plots.plot_forgetting_curves({"exact match": M.forgetting_curve(R_exact),
                                                         "rank": M.forgetting_curve(R_rank)},
                                                        out_dir / "forgetting.png", xlabel="after fact group k")}
    if lat is not None:
        out.update(lat.summary())
        paths["latency"] = plots.plot_latency(lat.times_s, lat.latency_ms, out_dir / "latency.png",
                                              learner_on=np.array(lat.attached),
                                              title="Per-token latency, learner detached vs attached")
    out["series"] = {
        "R_exact": R_exact, "R_rank": R_rank, "baseline_exact": b_exact, "baseline_rank": b_rank,
        "retention": {k: {"delay": c.delay.tolist(), "retention": c.retention.tolist(), "count": c.count.tolist()}
                      for k, c in curves.items()},
        "forgetting_curve": M.forgetting_curve(R_exact).tolist(),
        "half_life_note": fits["exact match"].note, "plots": {k: str(v) for k, v in paths.items()},
        "learner_errors": status["errors"][-5:],
    }
    recall = " | ".join(f"{k}: {out[f'recall_d{k}']:.0%}/{out[f'rank_recall_d{k}']:.0%}" for k in delays)
    other = " | ".join(f"{k}: {out[f'recall_other_d{k}']:.0%}/{out[f'rank_recall_other_d{k}']:.0%}" for k in delays)
    lines = [f"chat-facts: {len(facts)} facts over {interactions} interactions, {status['steps']} learner steps",
             f"recall by delay (exact/rank): {recall}",
             f"asked in other words (exact/rank): {other}",
             f"BWT {100 * out['bwt']:+.1f} pts, forgetting {100 * out['forgetting']:.1f} pts, ACC {out['acc']:.0%} "
             f"(rank: BWT {100 * out['bwt_rank']:+.1f}, forgetting {100 * out['forgetting_rank']:.1f})"]
    if lat is not None:
        lines.append(f"serving latency per token p50 {out['token_ms_p50_detached']:.2f} ms detached, "
                     f"{out['token_ms_p50_attached']:.2f} ms attached ({100 * out['latency_overhead_p50']:+.0f}%; "
                     f"p99 {100 * out['latency_overhead_p99']:+.0f}%)")
    lines.append(f"plots: {', '.join(str(p) for p in paths.values())}")
    out["summary"] = lines
    return out
