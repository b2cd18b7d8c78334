"""The main job on the embedded defaults: train a small MCSD model briefly, then talk to it.

``synclearn run`` trains ``mcsd-tiny`` on the built-in corpus for a few dozen seconds,
prints the training throughput and the loss curve's ends, decodes a sample, and saves the
checkpoint under ``outputs/``. (The full Hydra experiment replaces this job later.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from synclearn.data import encode_corpus
from synclearn.model import load_model, save_model


def train_briefly(model, data: torch.Tensor, *, steps: int, batch: int, seq: int, lr: float, seed: int) -> dict:
    """AdamW on random windows of ``data``; returns loss and throughput figures."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    losses, t0 = [], time.perf_counter()
    for i in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        window = torch.stack([data[s : s + seq + 1] for s in starts.tolist()])  # [B, T+1]
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - t0
    model.eval()
    return {"steps": steps, "seconds": seconds, "tokens_per_s": steps * batch * seq / seconds,
            "first_loss": sum(losses[:10]) / len(losses[:10]), "last_loss": sum(losses[-10:]) / len(losses[-10:])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="synclearn run", description=__doc__)
    ap.add_argument("--model", default="mcsd-tiny")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="outputs/quickstart")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    model = load_model(args.model, seed=args.seed)
    data = encode_corpus()
    print(f"model {args.model}: {model.num_parameters() / 1e6:.2f}M parameters; corpus {len(data):,} tokens")
    stats = train_briefly(model, data, steps=args.steps, batch=args.batch, seq=args.seq, lr=args.lr, seed=args.seed)
    print(f"trained {stats['steps']} steps in {stats['seconds']:.1f}s: {stats['tokens_per_s']:,.0f} tokens/s, "
          f"loss {stats['first_loss']:.3f} -> {stats['last_loss']:.3f}")

    t0 = time.perf_counter()
    gen = model.generate("What is Ada's pet?", chat=True, max_new_tokens=48)
    decode_s = time.perf_counter() - t0
    print(f"sample (chat, greedy): {gen.text!r}")
    sample = model.generate("The learner ", max_new_tokens=80, temperature=0.7, top_k=20, seed=args.seed)
    print(f"sample (text, T=0.7): {'The learner ' + sample.text!r}")
    print(f"decode: {len(gen.ids) / decode_s:,.0f} tokens/s at batch 1, state {gen.state.nbytes():,} bytes")
    path = save_model(model, Path(args.out))
    print(f"checkpoint: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
