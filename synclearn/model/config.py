"""MCSDConfig: the typed, validated shape of an MCSD language model, and the named sizes.

Every field is a constructor argument of :class:`~synclearn.model.mcsd.MCSDLM` (through the
config), so this dataclass is the schema of ``conf/model/*.yaml`` too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from synclearn.model.tokenizer import ByteTokenizer


class ConfigError(ValueError):
    """A configuration has one or more invalid fields; the message lists every one."""


@dataclass
class MCSDConfig:
    """Shape and numerics of an MCSD language model.

    Attributes:
        vocab_size: token vocabulary; at least the byte tokenizer's size (263).
        d_model: residual width D.
        n_layers: number of residual MCSD + MLP layers.
        n_channels: C, the mixer's channels ("heads"); D must be divisible by C.
        d_ff: neurons per selectable MLP (rows of the up projection).
        chunk_size: block length of the chunked mixer form used for training and prefill.
        predictor_rank: rank r of the low-rank active-neuron predictor (0 = no predictor).
        norm_eps: epsilon of every RMSNorm.
        init_std: standard deviation of the weight initialization.
        tie_embeddings: share the input embedding with the output head.
        gated_decay: the decay section's decay is chosen by each token, per feature (a selective
            scan): a_n = a_i^dt_n and input dt_n * E_n with dt_n = softplus(x W_G + b_G), W_G
            [D, D]. Initialized to dt = 1 (W_G = 0), i.e. the fixed-decay mixer. A token can then
            hold what came before it (dt -> 0) or overwrite it (dt large). Measured on the chat
            base (experiments/bench_base.py): more of a small, often-seen world recalled, no
            in-context binding of names; off by default.
        name: informational label (e.g. "mcsd-tiny"); not part of the math.
    """

    vocab_size: int = 264
    d_model: int = 64
    n_layers: int = 2
    n_channels: int = 4
    d_ff: int = 256
    chunk_size: int = 64
    predictor_rank: int = 16
    norm_eps: float = 1e-6
    init_std: float = 0.02
    tie_embeddings: bool = True
    gated_decay: bool = False
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("invalid MCSDConfig: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid field, each with the value found and what would be accepted."""
        out: list[str] = []
        for name in ("vocab_size", "d_model", "n_layers", "n_channels", "d_ff", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                out.append(f"{name}={value!r} (expected a positive integer)")
        if isinstance(self.predictor_rank, bool) or not isinstance(self.predictor_rank, int) or self.predictor_rank < 0:
            out.append(f"predictor_rank={self.predictor_rank!r} (expected an integer >= 0)")
        for name in ("norm_eps", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                out.append(f"{name}={value!r} (expected a positive number)")
        for name in ("tie_embeddings", "gated_decay"):
            if not isinstance(getattr(self, name), bool):
                out.append(f"{name}={getattr(self, name)!r} (expected true or false)")
        ok_ints = all(isinstance(getattr(self, n), int) and getattr(self, n) > 0 for n in ("d_model", "n_channels"))
        if ok_ints and self.d_model % self.n_channels:
            out.append(
                f"d_model={self.d_model} is not divisible by n_channels={self.n_channels} "
                "(each channel gets d_model / n_channels features)"
            )
        if isinstance(self.vocab_size, int) and 0 < self.vocab_size < ByteTokenizer.size:
            out.append(f"vocab_size={self.vocab_size} (expected >= {ByteTokenizer.size}, the byte tokenizer's size)")
        return out

    @property
    def d_channel(self) -> int:
        """Features per mixer channel, Dc = D / C."""
        return self.d_model // self.n_channels

    def num_parameters(self) -> int:
        """Parameter count of the model this config builds (tied head counted once)."""
        d, ff = self.d_model, self.d_ff
        per_layer = 6 * d * d + 2 * d * ff + 3 * d  # mixer (4 in + 2 out) + MLP + norms/channel norm
        per_layer += d * d + d if self.gated_decay else 0  # the decay gate W_G, b_G
        per_layer += self.predictor_rank * (d + ff) + ff if self.predictor_rank else 0  # predictor + its bias
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.n_layers * per_layer + d + head

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MCSDConfig":
        """Build from a dict (e.g. a checkpoint's config.json); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"model_type"})
        if unknown:
            raise ConfigError(f"unknown MCSDConfig fields {unknown}; accepted: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})


# Named sizes. The 1.6B/3B entries keep the MCSD paper's shapes (D 2560, C 10, 12/20 layers);
# with a byte vocabulary the embedding is tiny, so d_ff is set for the paper's parameter counts.
NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    "mcsd-tiny": dict(d_model=64, n_layers=2, n_channels=4, d_ff=256, predictor_rank=16, chunk_size=16),
    # the chat base of the benchmarks (synclearn pretrain): learns the chat format in minutes on 2 CPU cores
    "mcsd-chat": dict(d_model=128, n_layers=4, n_channels=4, d_ff=512, predictor_rank=16, chunk_size=32),
    "mcsd-small": dict(d_model=512, n_layers=10, n_channels=8, d_ff=2048, predictor_rank=64),
    "mcsd-1b": dict(d_model=2048, n_layers=17, n_channels=8, d_ff=8192, predictor_rank=128),
    "mcsd-1.6b": dict(d_model=2560, n_layers=12, n_channels=10, d_ff=18432, predictor_rank=128),
    "mcsd-3b": dict(d_model=2560, n_layers=20, n_channels=10, d_ff=21504, predictor_rank=128),
}


def named_config(name: str, **overrides: Any) -> MCSDConfig:
    """The config of a named size, with optional field overrides."""
    if name not in NAMED_CONFIGS:
        raise ConfigError(f"unknown model name {name!r}; known: {sorted(NAMED_CONFIGS)}")
    return MCSDConfig(**{**NAMED_CONFIGS[name], "name": name, **overrides})
