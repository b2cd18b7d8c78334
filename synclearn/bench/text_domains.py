"""Text domains: domain-incremental language modelling over a sequence of text streams.

A small MCSD model learns T text domains one after the other with the
:class:`~synclearn.learn.Learner`; after each domain it is tested on held-out text of every
domain. ``R[i, j]`` is the next-byte accuracy (share of held-out target tokens predicted
by the argmax, in [0, 1]) on domain j after learning domain i; ACC, BWT, forgetting and FWT
follow from it (:mod:`synclearn.eval.metrics`). The per-token NLL (nats) is reported beside
it as ``R_nll``.

Domains are built-in names (``BUILTIN_DOMAINS``, all generated or shipped, nothing is
downloaded) or paths of UTF-8 text files (one domain per file, named by the file stem):

* ``"prose"``: the shipped English corpus (:func:`~synclearn.data.builtin_text`);
* ``"arithmetic"``: generated statements such as ``37 + 48 = 85.``;
* ``"code"``: generated Python-like lines (assignments, loops, small functions);
* ``"chat"``: generated question/answer turns about made-up people, as ``Q: ... A: ...``.

By default the stream is arithmetic -> code -> chat (``DEFAULT_DOMAINS``), and the model is
first warmed up on the prose (``warmup``, ``warmup_steps`` dense AdamW steps; 0 disables it):
the sparse and LoRA families cannot change the embeddings, norms or mixer, and a
randomly initialized model's output scale is too small for them to lower the NLL much, so a
warm-up stands in for the pretrained model an on-device learner starts from. Accuracy on the
warm-up domains before and after the stream is reported (forgetting of the base skill).

Each domain's text is cut into segments of at most ``segment_bytes`` bytes (whole lines
packed together); a seeded share of them is held out for testing. Methods are the ones of
:mod:`synclearn.bench.split_digits` (``METHODS``): naive sparse, replay, consolidation (lock),
LoRA and full, with or without replay; the replay buffer holds training segments (reservoir).
LoRA/full consolidation is EWC (``EWC_METHODS``, e.g. lora+replay+ewc: the Fisher is estimated
on each domain's training segments at its end; untuned learning rate, that of the method
without ``+ewc``).

    result = run_text_domains("replay", steps_per_domain=100, out_dir=Path("out"))
    result["acc"], result["R"], result["R_nll"]

From Hydra, :func:`run` is the benchmark (``synclearn run experiment=text_domains``; the
method follows from the ``learner`` and ``memory`` groups, see
:func:`~synclearn.bench.split_digits.hydra_method`).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synclearn.eval import metrics
from synclearn.memory.replay import Reservoir
from synclearn.bench.split_digits import (
    EWC_METHODS,
    METHODS,
    SCALARS,
    default_lr,
    hydra_method,
    method_learner,
    method_spec,
    pinned_consolidation,
    replay_rows,
    scalars_series_summary,
    split_learner_settings,
)

__all__ = ["BUILTIN_DOMAINS", "DEFAULT_DOMAINS", "DEFAULT_LR", "EWC_METHODS", "METHODS", "domain_segments",
           "evaluate_domains", "load_domains", "run", "run_text_domains", "segment_text", "warm_up"]

BUILTIN_DOMAINS = ("prose", "arithmetic", "code", "chat")
DEFAULT_DOMAINS = ("arithmetic", "code", "chat")  # the stream; "prose" is the default warm-up
# Per method, the best ACC of a sweep over 1e-4 .. 3e-2 on seed 100 (not a reported seed) with the
# defaults (prose warm-up, 100 steps per domain; experiments/bench_text_domains.py --lrs ...).
DEFAULT_LR = {"naive": 1e-2, "replay": 1e-2, "consolidation": 1e-2, "lora": 3e-3, "lora+replay": 1e-2,
              "full": 1e-3, "full+replay": 3e-3}


def _arithmetic(rng: random.Random) -> str:
    a, b, op = rng.randint(0, 99), rng.randint(0, 99), rng.choice("+-*")
    return f"{a} {op} {b} = {a + b if op == '+' else a - b if op == '-' else a * b}."


def _code(rng: random.Random) -> str:
    v, w, n = rng.choice("abcdxyz"), rng.choice(["total", "count", "acc", "result"]), rng.randint(1, 9)
    return rng.choice([
        f"{v} = {w} + {n}",
        f"for i in range({n}):\n    {w} += {v} * i",
        f"def f{n}({v}):\n    return {v} * {n} + 1",
        f"if {v} > {n}:\n    print({v})",
        f"{w} = [{v} for {v} in range({n})]",
    ])


def _chat(rng: random.Random) -> str:
    from synclearn.data import chat_pairs

    pair = chat_pairs(1, seed=rng.randrange(2**31))[0]
    return f"Q: {pair['prompt']}\nA: {pair['response']}"


def segment_text(text: str, segment_bytes: int) -> list[str]:
    """Pack whole lines into segments of at most ``segment_bytes`` UTF-8 bytes (longer lines
    are cut); blank lines are dropped."""
    segments, current = [], ""
    for line in text.splitlines():
        if not line.strip():
            continue
        while len(line.encode("utf-8")) > segment_bytes:  # cut on a character boundary
            cut = len(line.encode("utf-8")[:segment_bytes].decode("utf-8", errors="ignore"))
            if current:
                segments.append(current)
                current = ""
            segments.append(line[:cut])
            line = line[cut:]
        joined = f"{current}\n{line}" if current else line
        if len(joined.encode("utf-8")) > segment_bytes:
            segments.append(current)
            joined = line
        current = joined
    if current:
        segments.append(current)
    return segments


def domain_segments(domain: str | Path, *, seed: int = 0, segment_bytes: int = 128,
                    generated_bytes: int = 24_000) -> tuple[str, list[str]]:
    """(name, segments) of one domain: a built-in name or a text file path.

    Generated domains produce about ``generated_bytes`` bytes of text from ``seed``.
    """
    if isinstance(domain, str) and domain in BUILTIN_DOMAINS:
        if domain == "prose":
            from synclearn.data import builtin_text

            return domain, segment_text(builtin_text(), segment_bytes)
        make = {"arithmetic": _arithmetic, "code": _code, "chat": _chat}[domain]
        rng = random.Random(f"{domain}-{seed}")
        lines, size = [], 0
        while size < generated_bytes:
            lines.append(make(rng))
            size += len(lines[-1]) + 1
        return domain, segment_text("\n".join(lines), segment_bytes)
    path = Path(domain)
    if not path.is_file():
        raise ValueError(f"domain {str(domain)!r} is neither a built-in domain {list(BUILTIN_DOMAINS)} nor a file")
    segments = segment_text(path.read_text(encoding="utf-8"), segment_bytes)
    if len(segments) < 2:
        raise ValueError(f"domain file {str(path)!r} has {len(segments)} text segment(s); at least 2 are needed "
                         "(one to learn, one to test)")
    return path.stem, segments


def load_domains(domains: Sequence[str | Path] | None = None, *, seed: int = 0, segment_bytes: int = 128,
                 test_fraction: float = 0.2) -> list[tuple[str, list[str], list[str]]]:
    """[(name, train segments, test segments)] per domain; the held-out share is drawn by ``seed``."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction!r} (expected 0 < test_fraction < 1)")
    out = []
    for domain in DEFAULT_DOMAINS if domains is None else domains:
        name, segments = domain_segments(domain, seed=seed, segment_bytes=segment_bytes)
        order = np.random.default_rng([seed, len(out)]).permutation(len(segments))
        n_test = min(len(segments) - 1, max(1, round(test_fraction * len(segments))))
        test = sorted(order[:n_test].tolist())
        train = sorted(order[n_test:].tolist())
        out.append((name, [segments[i] for i in train], [segments[i] for i in test]))
    if not out:
        raise ValueError("domains is empty; pass at least one domain name or file")
    return out


@torch.no_grad()
def evaluate_domains(model: torch.nn.Module, tests: Sequence[Sequence[str]], batch_size: int = 32,
                     max_seq_len: int = 512) -> tuple[list[float], list[float]]:
    """(next-byte accuracy, mean per-token NLL in nats) on each list of held-out segments.

    Every token after the first of a segment is a target; both numbers are token-weighted.
    """
    from synclearn.learn.batch import build_batch

    tok, pad = model.tokenizer, getattr(model.tokenizer, "PAD", 0)
    accs, nlls = [], []
    for segments in tests:
        correct = nll = count = 0.0
        for start in range(0, len(segments), batch_size):
            b = build_batch(tok, list(segments[start : start + batch_size]), max_seq_len=max_seq_len, pad_id=pad,
                            device=model.device)
            logits = model(b.inputs).float()  # [B, T, V]
            ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), b.targets, reduction="none")  # [B, T]
            correct += float(((logits.argmax(-1) == b.targets).float() * b.mask).sum())
            nll += float((ce * b.mask).sum())
            count += float(b.mask.sum())
        accs.append(correct / count)
        nlls.append(nll / count)
    return accs, nlls


def warm_up(model: torch.nn.Module, segments: Sequence[str], steps: int, *, lr: float = 3e-3,
            batch_size: int = 8, seed: int = 0) -> list[float]:
    """Dense AdamW for ``steps`` steps on random batches of ``segments``; returns the losses.
    Leaves every parameter with ``requires_grad=False`` (the benchmark's learner sets its own)."""
    from synclearn.learn import Learner

    learner = Learner(model, update="full", lr=lr, seed=seed)
    rng = np.random.default_rng([seed, 7])
    losses = [learner.step([segments[i] for i in rng.choice(len(segments), size=batch_size)]).loss
              for _ in range(steps)]
    for p in model.parameters():
        p.requires_grad_(False)
    return losses


def _finite_or_none(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def run_text_domains(
    method: str,
    *,
    seed: int = 0,
    domains: Sequence[str | Path] | None = None,
    steps_per_domain: int = 100,
    batch_size: int = 8,
    buffer_size: int = 64,
    neuron_fraction: float = 0.05,
    lock_fraction: float = 0.1,
    segment_bytes: int = 128,
    model: Any = "mcsd-tiny",
    warmup: Sequence[str | Path] | None = ("prose",),
    warmup_steps: int = 200,
    warmup_lr: float = 3e-3,
    out_dir: str | Path | None = None,
    consolidation: Callable[[Any], Any] | None = None,
    **learner_kw: Any,
) -> dict[str, Any]:
    """Learn the domains in order with ``method``; test every domain after each one.

    Args:
        method: one of ``METHODS`` (naive, replay, consolidation, lora, lora+replay, full,
            full+replay; see :mod:`synclearn.bench.split_digits`) or ``EWC_METHODS``.
        seed: seeds the model's initialization, generated text, the held-out split, batch
            order, the replay buffer and neuron selection; same seed, same result.
        domains: built-in names (``BUILTIN_DOMAINS``) and/or text file paths, in learning
            order (default ``DEFAULT_DOMAINS``: arithmetic, code, chat).
        steps_per_domain: learning steps on each domain (the same for every method).
        batch_size: new segments per step (replaying methods add up to as many replayed ones).
        buffer_size: replay buffer capacity in segments (methods with replay only).
        neuron_fraction: sparse budget per layer and step (sparse methods).
        lock_fraction: share of neurons locked at each domain boundary ("consolidation").
        segment_bytes: longest text segment (training example) in bytes.
        model: a named size for :func:`~synclearn.model.load_model`, an
            :class:`~synclearn.model.MCSDConfig`, or a model to learn in place.
        warmup: domains (names or files) to warm the model up on before the stream.
        warmup_steps: dense AdamW steps (lr ``warmup_lr``) on a mixture of the ``warmup``
            domains' training segments; 0 = no warm-up.
        out_dir: if given, ``text_domains_<method>_s<seed>.json`` and ``.png`` (heatmap of R)
            are written there.
        consolidation: for consolidating methods, a callable ``learner -> Consolidation``
            used instead of the default (lock ``lock_fraction`` for sparse, EWC for LoRA/full),
            applied at every domain boundary.
        **learner_kw: more :class:`~synclearn.learn.Learner` arguments (``lr``, when absent
            or None, defaults to ``DEFAULT_LR[method]``).

    Returns:
        JSON-ready dict: ``acc``, ``bwt``, ``forgetting``, ``fwt`` (from next-byte accuracy;
        None where undefined), ``R`` [T][T], ``R_nll`` [T][T], ``baseline`` and
        ``baseline_nll`` [T] (the model before the stream, after any warm-up), ``nll`` (final mean NLL), ``nll_bwt`` (mean NLL
        increase on earlier domains, > 0 is forgetting), ``warmup`` (accuracy and NLL on the
        warm-up domains before and after the stream, or None), ``domains``, ``seconds``
        (learning steps only), settings.
    """
    spec = method_spec(method)
    bad = [f"{n}={v!r}" for n, v in (("steps_per_domain", steps_per_domain), ("batch_size", batch_size),
                                     ("segment_bytes", segment_bytes)) if not isinstance(v, int) or v < 1]
    if not isinstance(buffer_size, int) or buffer_size < 0:
        bad.append(f"buffer_size={buffer_size!r}")
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        bad.append(f"warmup_steps={warmup_steps!r}")
    elif warmup_steps and not warmup:
        bad.append(f"warmup_steps={warmup_steps} needs warmup domains (warmup={warmup!r})")
    if bad:
        raise ValueError(f"invalid text-domains settings: {', '.join(bad)} (expected positive integers; "
                         "buffer_size and warmup_steps may be 0)")
    from synclearn.model import MCSDConfig, build_model, load_model

    data = load_domains(domains, seed=seed, segment_bytes=segment_bytes)
    if isinstance(model, MCSDConfig):
        model = build_model(model, seed=seed)
    elif isinstance(model, (str, Path)):
        model = load_model(model, seed=seed)
    warm = load_domains(warmup, seed=seed, segment_bytes=segment_bytes) if warmup_steps else []
    warm_tests = [test for _, _, test in warm]
    if warm:
        warm_up(model, [s for _, train, _ in warm for s in train], warmup_steps, lr=warmup_lr,
                batch_size=batch_size, seed=seed)
    warm_before = evaluate_domains(model, warm_tests) if warm else None
    if learner_kw.get("lr") is None:
        learner_kw["lr"] = default_lr(DEFAULT_LR, method)
    learner, consolidation = method_learner(model, spec, neuron_fraction=neuron_fraction, seed=seed,
                                            learner_kw=learner_kw, consolidation=consolidation,
                                            lock_fraction=lock_fraction)
    rng = np.random.default_rng(seed)
    buffer = Reservoir(buffer_size) if spec.replay and buffer_size > 0 else None  # indices into pool
    pool: list[str] = []  # every training segment seen so far
    tests = [test for _, _, test in data]

    baseline, baseline_nll = evaluate_domains(model, tests)
    rows, rows_nll, steps, skipped, seconds = [], [], 0, 0, 0.0
    for _, train, _ in data:
        offset, order, cursor, first_pass = len(pool), rng.permutation(len(train)), 0, True
        pool.extend(train)
        t0 = time.perf_counter()
        for _ in range(steps_per_domain):
            if cursor >= len(order):  # next pass over the domain
                order, cursor, first_pass = rng.permutation(len(train)), 0, False
            new = order[cursor : cursor + batch_size] + offset
            cursor += batch_size
            replayed = replay_rows(buffer, len(new), rng)
            result = learner.step([pool[i] for i in np.concatenate([new, replayed])])
            steps, skipped = steps + 1, skipped + int(result.skipped)
            if first_pass and buffer is not None:  # the stream offers each segment to the buffer once
                buffer.offer(new, rng)
        if consolidation is not None:
            if consolidation.policy == "ewc":  # Fisher of this domain's loss, then anchor here
                for start in range(0, len(train), batch_size):
                    consolidation.observe(train[start : start + batch_size])
            consolidation.consolidate()
        seconds += time.perf_counter() - t0
        acc, nll = evaluate_domains(model, tests)
        rows.append(acc)
        rows_nll.append(nll)

    warm_after = evaluate_domains(model, warm_tests) if warm else None
    R, R_nll = metrics.accuracy_matrix(rows), np.asarray(rows_nll)
    summary = metrics.summarize(R, baseline=baseline)
    T = len(data)
    result = {
        "benchmark": "text_domains", "method": method, "seed": seed, "domains": [name for name, _, _ in data],
        "update": spec.update, "uses_buffer": spec.replay, "buffer_size": buffer_size if spec.replay else 0,
        "steps_per_domain": steps_per_domain, "batch_size": batch_size, "lr": learner.lr,
        "neuron_fraction": neuron_fraction if spec.update == "sparse" else None,
        "lock_fraction": consolidation.fraction if consolidation is not None and consolidation.policy == "lock"
        else None,
        "consolidation": consolidation.policy if consolidation is not None else None,
        **{k: _finite_or_none(v) for k, v in summary.items()},
        "nll": float(R_nll[-1].mean()),
        "nll_bwt": _finite_or_none(float(np.mean(R_nll[-1, :-1] - np.diag(R_nll)[:-1])) if T > 1 else math.nan),
        "R": R.tolist(), "R_nll": R_nll.tolist(), "baseline": baseline, "baseline_nll": baseline_nll,
        "forgetting_curve": [_finite_or_none(v) for v in metrics.forgetting_curve(R)],
        "steps": steps, "skipped_steps": skipped, "seconds": seconds,
        "segments": {name: [len(train), len(test)] for name, train, test in data},
        "warmup": None if not warm else {
            "domains": [name for name, _, _ in warm], "steps": warmup_steps, "lr": warmup_lr,
            "acc_before": warm_before[0], "acc_after": warm_after[0],
            "nll_before": warm_before[1], "nll_after": warm_after[1]},
        "definitions": {**{k: metrics.DEFINITIONS[k] for k in summary},
                        "R": "R[i, j] = next-byte accuracy on domain j's held-out text after learning domain i",
                        "nll_bwt": "1/(T-1) sum_{j<T-1} (R_nll[T-1, j] - R_nll[j, j]), nats per token"},
    }
    if out_dir is not None:
        _write_outputs(result, Path(out_dir), f"text_domains_{method.replace('+', '-')}_s{seed}")
    return result


def run(
    out_dir: str | Path,
    *,
    learner: dict[str, Any],
    memory: Any,
    seed: int = 0,
    progress: bool = False,
    domains: Sequence[str] | None = None,
    steps_per_domain: int = 100,
    batch_size: int = 8,
    buffer_size: int = 64,
    segment_bytes: int = 128,
    model: str = "mcsd-tiny",
    model_overrides: dict[str, Any] | None = None,
    warmup: Sequence[str] | None = ("prose",),
    warmup_steps: int = 200,
    warmup_lr: float = 3e-3,
    lock_fraction: float | None = None,
) -> dict[str, Any]:
    """Text domains as a Hydra benchmark (``conf/benchmark/text_domains.yaml``).

    ``lock_fraction``, when given, replaces ``memory.consolidation``'s lock fraction (the
    benchmark pins the one its learning rates were tuned at).

    It builds its own model (``needs_model: false`` in ``conf/benchmark/text_domains.yaml``):
    ``model`` is a named size (freshly
    initialized from ``seed``, ``model_overrides`` changing MCSDConfig fields) warmed up on
    ``warmup``; :func:`~synclearn.bench.experiment.run_experiment` passes the ``learner``
    group's settings (``lr: null`` = the tuned ``DEFAULT_LR``) and the ``memory`` group. The
    method follows from them as in :func:`~synclearn.bench.split_digits.hydra_method`;
    consolidation is ``memory.consolidation`` applied at every domain boundary (lock for
    sparse, EWC for LoRA/full with ``policy: auto``). ``memory.batch_size``,
    ``memory.consolidate_every`` and the replay group do not apply (the benchmark's
    ``batch_size``, domain boundaries and reservoir buffer do).

    Returns the benchmark contract's metrics: flat scalars (``acc``, ``bwt``, ``forgetting``,
    ``fwt`` from next-byte accuracy, ``nll``, ``nll_bwt``, ``warmup_acc_after``, ...),
    ``series`` (``R``, ``R_nll``, baselines, ...) and ``summary`` lines; the R heatmap and the
    per-method JSON are written into ``out_dir``.
    """
    del progress
    from synclearn.model import named_config

    update, neuron_fraction, learner_kw = split_learner_settings(learner, seed, "text-domains")
    method = hydra_method(update, memory, "text-domains")
    config: Any = model
    if model_overrides:
        config = named_config(model, **dict(model_overrides))
    result = run_text_domains(method, seed=seed, domains=None if domains is None else list(domains),
                              steps_per_domain=steps_per_domain, batch_size=batch_size, buffer_size=buffer_size,
                              neuron_fraction=0.05 if neuron_fraction is None else neuron_fraction,
                              segment_bytes=segment_bytes, model=config,
                              warmup=None if warmup is None else list(warmup), warmup_steps=warmup_steps,
                              warmup_lr=warmup_lr, out_dir=out_dir,
                              consolidation=pinned_consolidation(memory.consolidation, lock_fraction), **learner_kw)
    out = scalars_series_summary(result, (*SCALARS, "nll", "nll_bwt"))
    warm = result["warmup"]
    if warm:
        out["warmup_acc_before"] = float(np.mean(warm["acc_before"]))
        out["warmup_acc_after"] = float(np.mean(warm["acc_after"]))
    bwt, forgetting, fwt = (f"{100 * out[k]:+.1f} pts" if math.isfinite(out[k]) else "n/a"
                            for k in ("bwt", "forgetting", "fwt"))
    out["summary"] = [
        (f"text-domains {' -> '.join(result['domains'])}, {method} (update={update}, lr={result['lr']:.3g}, "
        f"{f'replay buffer {buffer_size}' if result['uses_buffer'] else 'no replay'}, "
        f"consolidation={result['consolidation'] or 'none'}): {result['steps']} steps in {result['seconds']:.1f}s"),
        f"next-byte ACC {out['acc']:.3f}, BWT {bwt}, forgetting {forgetting}, FWT {fwt}; final NLL "
        f"{out['nll']:.3f} nats/token" + (f"; warm-up accuracy {out['warmup_acc_before']:.3f} -> "
                                          f"{out['warmup_acc_after']:.3f}" if warm else ""),
        "R (rows: after domain i; columns: next-byte accuracy on domain j): "
        + " | ".join(" ".join(f"{v:.3f}" for v in row) for row in result["R"]),
        f"plot: {result['files']['png']}",
    ]
    return out


def _write_outputs(result: dict[str, Any], out_dir: Path, stem: str) -> None:
    from synclearn.eval.plots import plot_accuracy_matrix

    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_accuracy_matrix(result["R"], out_dir / f"{stem}.png", task_names=result["domains"],
                               title=f"text domains, {result['method']}: next-byte ACC {result['acc']:.3f}")
    result["files"] = {"json": str(out_dir / f"{stem}.json"), "png": str(png)}
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2))
