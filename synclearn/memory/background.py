"""Background statistics: how often and how strongly each neuron fires on ordinary input.

A neuron that fires on almost every token (a "busy" neuron) carries the model's general
skills; a neuron that fires mostly on one input is specific to it. The specificity selector
(:func:`synclearn.learn.select.select_specificity`) compares a batch's activations with these
statistics, so a learning step changes what is specific to the new input instead of what is
generally busy (sparse memory finetuning, Lin et al. 2025).

For every MLP layer ``l`` and neuron ``i`` (activation ``h`` of the squared-ReLU MLP):

* ``mean[l][i]``: mean activation per token, E_t[|h_ti|];
* ``rate[l][i]``: firing rate, the share of tokens with ``h_ti != 0``;
* ``tokens``: how many tokens the estimate rests on.

Sources:

* :func:`compute_background`: pretraining-style data (the built-in corpus and the chat mix of
  :mod:`synclearn.data`), run once through the base model; :func:`background_for` saves the
  result beside a cached base model (``background.safetensors``) and loads it from there;
* :meth:`BackgroundStats.observe`: served traffic (logged turns), as an exponential moving
  average, in the learner's thread (never on the serving path).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from synclearn.learn.guard import guard_for
from synclearn.model.neurons import NeuronTrace, neuron_context

BACKGROUND_FILE = "background.safetensors"


class BackgroundStats:
    """Per-neuron background statistics of a model's MLP layers (float64, on CPU).

    Args:
        d_ff: layer -> number of neurons.
        horizon: tokens the estimate averages over. Until that many tokens were seen it is the
            plain running mean; after that an exponential moving average in which a batch of
            ``n`` tokens has weight ``n / horizon`` (so older traffic fades over ~horizon tokens).
    """

    def __init__(self, d_ff: dict[int, int], *, horizon: float = 262_144) -> None:
        if not horizon >= 1:
            raise ValueError(f"horizon={horizon!r} (expected >= 1 token)")
        self.horizon = float(horizon)
        self.mean = {int(layer): torch.zeros(n, dtype=torch.float64) for layer, n in d_ff.items()}
        self.rate = {int(layer): torch.zeros(n, dtype=torch.float64) for layer, n in d_ff.items()}
        self.tokens = 0.0
        self.source = "empty"

    @classmethod
    def for_model(cls, model: Any, **options: Any) -> "BackgroundStats":
        """Empty statistics for every MLP layer of ``model``."""
        return cls({layer: lay.d_ff for layer, lay in enumerate(model.neuron_layouts())}, **options)

    # -- accumulation ---------------------------------------------------------------------------
    def add(self, trace: NeuronTrace) -> None:
        """Fold one traced forward pass (its counted tokens) into the estimate."""
        n = float(trace.tokens)
        if n <= 0:
            return
        weight = n / min(self.tokens + n, max(self.horizon, n))
        for layer in self.mean:
            if layer in trace.mass:
                self.mean[layer].mul_(1 - weight).add_(trace.mass[layer].double().cpu() / n, alpha=weight)
                self.rate[layer].mul_(1 - weight).add_(trace.active[layer].double().cpu() / n, alpha=weight)
        self.tokens += n

    @torch.no_grad()
    def observe_tokens(self, model: Any, ids: Tensor, mask: Tensor | None = None) -> None:
        """Trace ``model`` on token ids [B, T] (``mask`` [B, T] selects counted tokens; None:
        all) under its read lock and fold the activations in."""
        trace = NeuronTrace(mask=mask)
        with guard_for(model).read(), neuron_context(trace=trace):
            model(ids.to(model.device))
        self.add(trace)

    def observe(self, model: Any, examples: Sequence[dict[str, str]], max_seq_len: int = 256) -> None:
        """Fold chat turns (``{"prompt", "response"}``, e.g. logged served turns) in: every
        token of each turn counts (what the model reads and what it says)."""
        if not examples:
            return
        tok = model.tokenizer
        rows = []
        for ex in examples:
            p, r = tok.turn(ex["prompt"], ex["response"])
            rows.append((p + r)[-max_seq_len:])
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), tok.PAD, dtype=torch.long)
        mask = torch.zeros(len(rows), T)
        for k, r in enumerate(rows):
            ids[k, : len(r)] = torch.tensor(r)
            mask[k, : len(r)] = 1.0
        self.observe_tokens(model, ids, mask)

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"mean": {k: v.clone() for k, v in self.mean.items()},
                "rate": {k: v.clone() for k, v in self.rate.items()},
                "tokens": self.tokens, "horizon": self.horizon, "source": self.source}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mean = {int(k): v.double().clone() for k, v in state["mean"].items()}
        if {k: len(v) for k, v in mean.items()} != {k: len(v) for k, v in self.mean.items()}:
            raise ValueError(f"background statistics for layers/neurons {({k: len(v) for k, v in mean.items()})} "
                             f"do not fit this model's {({k: len(v) for k, v in self.mean.items()})}")
        self.mean = mean
        self.rate = {int(k): v.double().clone() for k, v in state["rate"].items()}
        self.tokens, self.source = float(state["tokens"]), str(state.get("source", "loaded"))

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (atomically: a temporary file renamed into place)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {f"mean.{k}": v for k, v in self.mean.items()} | {f"rate.{k}": v for k, v in self.rate.items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"tokens": json.dumps(self.tokens), "source": self.source})
        tmp.replace(path)
        return path

    def load(self, path: str | Path) -> "BackgroundStats":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state: dict[str, Any] = {"mean": {}, "rate": {}}
            for key in f.keys():
                kind, layer = key.split(".")
                state[kind][int(layer)] = f.get_tensor(key)
        state["tokens"] = json.loads(meta.get("tokens", "0"))
        state["source"] = meta.get("source", str(path))
        self.load_state_dict(state)
        return self


def background_corpus(n_tokens: int = 65_536, seed: int = 0) -> Tensor:
    """Pretraining-style tokens: the built-in text followed by the chat mix
    (:func:`synclearn.data.chat_mix.chat_mix`), [N] int64, N >= n_tokens."""
    from synclearn.data.builtin import builtin_text
    from synclearn.data.chat_mix import chat_mix
    from synclearn.model.tokenizer import ByteTokenizer

    text = torch.tensor(ByteTokenizer().encode(builtin_text(), bos=True, eos=True), dtype=torch.long)
    rest = max(0, n_tokens - len(text))
    return torch.cat([text, chat_mix(rest, seed=seed)]) if rest else text


def compute_background(model: Any, *, n_tokens: int = 65_536, seq_len: int = 128, batch_size: int = 16,
                       seed: int = 0, horizon: float = 262_144) -> BackgroundStats:
    """Background statistics of ``model`` on ``n_tokens`` of :func:`background_corpus`, as
    the plain mean over all of them (cut into [batch_size, seq_len] windows); later
    observations are averaged in over ``horizon`` tokens."""
    if n_tokens < seq_len or seq_len < 2 or batch_size < 1:
        raise ValueError(f"compute_background: need n_tokens={n_tokens!r} >= seq_len={seq_len!r} >= 2 and "
                         f"batch_size={batch_size!r} >= 1")
    stats = BackgroundStats.for_model(model, horizon=max(horizon, n_tokens))
    data = background_corpus(n_tokens, seed)
    windows = data[: len(data) // seq_len * seq_len].view(-1, seq_len)
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        trace = NeuronTrace()
        with torch.no_grad(), guard_for(model).read(), neuron_context(trace=trace):
            model(batch.to(model.device))
        stats.add(trace)
    stats.horizon = float(horizon)
    stats.source = f"pretraining mix ({int(stats.tokens)} tokens, seed {seed})"
    return stats


def background_for(model: Any, *, path: str | Path | None = None, compute: bool = True, save: bool = True,
                   **options: Any) -> BackgroundStats | None:
    """The background statistics that come with ``model``.

    Looks for ``path`` (default: ``background.safetensors`` in the model's directory, i.e.
    ``model.pretrain_info["path"]`` for a cached base); loads it when present. Otherwise, with
    ``compute``, computes them (:func:`compute_background` with ``options``) and, with ``save``
    and a known directory, saves them there for next time. Returns None when absent and not
    computed.
    """
    if path is None:
        base = (getattr(model, "pretrain_info", None) or {}).get("path")
        path = Path(base) / BACKGROUND_FILE if base else None
    if path is not None and Path(path).is_file():
        return BackgroundStats.for_model(model, horizon=options.get("horizon", 262_144)).load(path)
    if not compute:
        return None
    stats = compute_background(model, **options)
    if save and path is not None and Path(path).parent.is_dir():
        stats.save(path)
    return stats
