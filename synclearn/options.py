"""Every option of synclearn, defined once: dataclasses whose fields are the schema.

    opts = AttachOptions(batch_size=4)               # checked at construction: one error lists every bad field
    AttachOptions.from_dict({"batch_size": 4})       # unknown keys are an error naming them
    handle = learner.attach(session, **opts.kwargs())

Each field carries its type (checked), its default (the tuned benchmark defaults: an attached
learner rehearses each new turn until learned, as the chat-facts benchmark does), its bounds
and a one-line help text in ``metadata``. Everything else is derived from these dataclasses:

* the Python API: ``LearnerHandle`` / ``Learner.attach`` / ``Runtime.attach`` keywords;
* the HTTP schema: :func:`pydantic_model` turns a dataclass into a strict pydantic model
  (``extra="forbid"``, the same bounds), e.g. the server's attach body;
* the CLI: :func:`add_arguments` adds one ``--flag`` per field to an argparse parser;
* Hydra: ``conf/`` files name the dataclass as ``_target_`` and use its fields as keys.

Groups: :class:`AttachOptions` (how an attached learner builds batches and shares the device),
:class:`LearnerOptions` (how the :class:`~synclearn.learn.Learner` changes weights) and
:class:`ServeOptions` (the sessions' sampling defaults and threads).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def option(default: Any, help: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, default_factory: Any = None) -> Any:
    """A dataclass field with its help text and bounds (``ge``/``gt``/``le``/``lt``) in metadata."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


class Options:
    """Base of the option dataclasses: type and bound checks, ``from_dict``, ``kwargs``."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            setattr(self, f.name, _plain(getattr(self, f.name)))
        problems = self.problems()
        if problems:
            raise ValueError(f"invalid {type(self).__name__}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid field, each with the value found and what would be accepted."""
        hints = typing.get_type_hints(type(self))
        out = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            problem = check_value(getattr(self, f.name), hints[f.name], f.metadata)
            if problem:
                out.append(f"{f.name}={getattr(self, f.name)!r} (expected {problem})")
        return out + self.extra_problems()

    def extra_problems(self) -> list[str]:
        """Checks across fields (override in a subclass)."""
        return []

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
        """Build from a plain dict (a config, a request body); unknown keys are an error."""
        data = dict(data or {})
        known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; accepted: {known}")
        return cls(**data)

    def replace(self: T, **changes: Any) -> T:
        """A copy with ``changes`` (checked like the constructor, unknown keys refused)."""
        return type(self).from_dict({**self.kwargs(), **changes})  # type: ignore[attr-defined]

    def kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments (a shallow copy, nested values untouched)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]


# -- the option groups ------------------------------------------------------------------------

@dataclass
class AttachOptions(Options):
    """How an attached learner builds its batches and shares the device with serving
    (:class:`~synclearn.learn.sync.LearnerHandle`). The defaults rehearse each new turn until
    it is learned (at most ``new_repeats`` steps, each with fresh replay), as tuned on the
    chat-facts benchmark."""

    batch_size: int = option(8, "examples per learning step", ge=1, le=4096)
    replay_ratio: float = option(0.75, "share of each batch replayed from the log", ge=0, le=1)
    new_repeats: int = option(12, "at most this many steps train each new turn (fresh replay each time)", ge=1,
                              le=10_000)
    learned_loss: float | None = option(0.02, "a new turn counts as learned once its loss (nats/token) is below "
                                              "this (null: only new_repeats)", ge=0)
    min_gain: float | None = option(0.1, "... or once two steps in a row left its loss above (1 - this) x its best "
                                         "(null: never)", ge=0, le=1)
    until_reproduced: bool = option(False, "a new turn counts as learned early once the model reproduces it "
                                           "(greedy, teacher-forced) instead of by learned_loss")
    idle_replay: bool = option(False, "keep learning from replay alone when nothing is new")
    learn_threads: int = option(1, "torch intra-op threads of the learner thread (CPU)", ge=1, le=1024)
    idle_only: bool = option(True, "start steps only while no request is in flight")
    max_defer_s: float = option(2.0, "longest a step waits for serving to go idle (seconds)", ge=0, le=3600)
    yield_to_serving: bool = option(True, "pause a running step at layer boundaries while requests are in flight")
    poll_s: float = option(0.05, "how often an idle learner looks for new rows (seconds)", gt=0, le=60)
    on_error: Literal["continue", "stop"] = option("continue", "after an exception in a step")
    max_steps: int | None = option(None, "stop after this many committed steps (null: until detached)", ge=1)
    consolidate_every: int = option(20, "apply the consolidation policy every this many steps", ge=1)
    seed: int | None = option(None, "seed of the batch builder (null: the learner's seed)")
    switch_interval_s: float | None = option(0.0005, "sys.setswitchinterval while attached (null: leave it)",
                                             gt=0, le=1)


# the fields a memory setup decides (what is replayed and rehearsed), the rest how learning
# shares the device with serving
REHEARSAL_FIELDS = ("batch_size", "replay_ratio", "new_repeats", "learned_loss", "min_gain", "until_reproduced",
                    "consolidate_every")
GOVERNOR_FIELDS = tuple(name for name in AttachOptions.field_names() if name not in REHEARSAL_FIELDS)

UPDATE_RULES = ("sparse", "lora", "full")


@dataclass
class LearnerOptions(Options):
    """How the :class:`~synclearn.learn.Learner` changes weights (its keyword arguments).
    ``lr: null`` is the update family's default learning rate."""

    update: Literal["sparse", "lora", "full"] = option("sparse", "how weights change")
    neuron_fraction: float = option(0.05, "sparse: neuron budget per plastic layer and step", gt=0, le=1)
    plastic_layers: int | list[int] = option(4, "sparse: the last N layers may change, or explicit indices")
    optimizer: Literal["adamw", "sgd"] = option("adamw", "sparse: RowSparseAdamW or RowSparseSGD")
    selector: str = option("topk", "sparse: which neurons a step changes (topk | predictor | random | ...)")
    exploration: float = option(0.1, "sparse: share of the budget drawn from active but not top neurons",
                                ge=0, lt=1)
    optimizer_capacity: int | None = option(None, "sparse: neurons with optimizer moments per layer "
                                                  "(null: twice the budget)", ge=1)
    lr: float | None = option(None, "learning rate (null: the update family's default)", gt=0)
    betas: tuple[float, float] = option((0.9, 0.999), "AdamW betas")
    eps: float = option(1e-8, "AdamW epsilon", gt=0)
    weight_decay: float = option(0.0, "AdamW weight decay", ge=0)
    clip_norm: float = option(1.0, "gradient clipping threshold (global L2 norm; 0 disables)", ge=0)
    lora_rank: int = option(8, "lora: adapter rank", ge=1)
    lora_alpha: float = option(16.0, "lora: adapter scale numerator", gt=0)
    lora_targets: list[str] | None = option(None, "lora: module names to adapt (null: the model's defaults)")
    max_seq_len: int = option(512, "longest training sequence in tokens (longer examples keep their end)", ge=2)
    seed: int = option(0, "seeds neuron selection (per committed step), so runs repeat bitwise")

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):  # YAML and JSON have no tuples
            self.betas = tuple(self.betas)  # type: ignore[assignment]
        super().__post_init__()

    def extra_problems(self) -> list[str]:
        betas = self.betas
        if isinstance(betas, tuple) and len(betas) == 2 and all(isinstance(b, (int, float)) for b in betas) \
                and not all(0 <= b < 1 for b in betas):
            return [f"betas={betas!r} (expected two numbers in [0, 1))"]
        return []


@dataclass
class ServeOptions(Options):
    """How sessions sample by default and how serving shares the device with an attached learner.
    The defaults are the benchmarks' (greedy, short answers); ``conf/serve/chat.yaml`` samples."""

    max_new_tokens: int = option(48, "longest answer, in tokens (bytes for the byte tokenizer)", ge=1, le=1_000_000)
    temperature: float = option(0.0, "sampling temperature (0: greedy)", ge=0, le=100)
    top_k: int = option(0, "sample among the k likeliest tokens (0: all)", ge=0)
    top_p: float = option(1.0, "nucleus sampling mass", gt=0, le=1)
    serve_threads: int = option(0, "torch intra-op threads of the serving thread (0: leave as is)", ge=0, le=1024)
    sparse_decode: float | None = option(None, "decode with this share of each MLP's neurons per token (MCSD "
                                               "models; prefill stays dense; null: dense)", gt=0, le=1)
    sparse_mode: Literal["predictor", "topk"] = option("predictor", "sparse decode's choice of neurons: the "
                                                       "model's predictor (saves compute) or the true top-k (a "
                                                       "reference: computes every neuron)")
    compile_decode: bool = option(False, "run the MCSD decode step through torch.compile (needs a C++ compiler; "
                                         "stays eager without one)")
    attach: dict[str, Any] = option(None, "how an attached learner shares the device: AttachOptions fields of "
                                          "GOVERNOR_FIELDS (the rehearsal fields come from the memory setup)",
                                    default_factory=dict)

    def extra_problems(self) -> list[str]:
        if not isinstance(self.attach, dict):
            return []
        wrong = sorted(set(self.attach) - set(GOVERNOR_FIELDS))
        if wrong:
            return [f"attach has {wrong} (expected only {list(GOVERNOR_FIELDS)}; the batch and rehearsal "
                    f"fields {list(REHEARSAL_FIELDS)} belong to the memory setup)"]
        try:
            AttachOptions(**self.attach)
        except ValueError as err:
            return [f"attach: {err}"]
        return []

    def attach_options(self) -> dict[str, Any]:
        """The governor fields as LearnerHandle keywords (a copy)."""
        return dict(self.attach)

    def sampling(self) -> dict[str, Any]:
        """The sampling and decoding defaults as ChatSession keywords."""
        out = {k: getattr(self, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p")}
        if self.sparse_decode is not None:
            out.update(sparse=self.sparse_decode, sparse_mode=self.sparse_mode)
        return out

    def prepare(self, model: Any) -> Any:
        """``model`` made ready to serve like this (``compile_decode``), after checking that it can
        decode as asked (``sparse_decode``: a ValueError that names the problem); returns it."""
        if self.sparse_decode is not None:
            from synclearn.model.neurons import SparseSpec

            SparseSpec.share_of(model, self.sparse_decode, self.sparse_mode)
        if self.compile_decode:
            if not hasattr(model, "compile_decode"):
                raise ValueError(f"compile_decode=true needs an MCSD model (got {type(model).__name__})")
            if not model.decode_kernel.compiled:  # once: a session per conversation must not recompile
                model.compile_decode()
        return model

    def session(self, model: Any, log: Any) -> Any:
        """A :class:`~synclearn.chat.ChatSession` on ``model`` logging into ``log``, sampling like this."""
        from synclearn.chat import ChatSession

        return ChatSession(self.prepare(model), log, **self.sampling())


def _plain(value: Any) -> Any:
    """Hydra's DictConfig/ListConfig (any mapping or non-string sequence) as plain dicts and lists."""
    if isinstance(value, (str, bytes, dict, list, tuple)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    return value


# -- checks -------------------------------------------------------------------------------------

def check_value(value: Any, tp: Any, meta: Any = None) -> str | None:
    """None if ``value`` fits the annotation ``tp`` and the bounds in ``meta``; else what would be accepted."""
    expected = describe(tp)
    if not _fits(value, tp):
        return expected
    meta = meta or {}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bounds = [(k, meta.get(k)) for k in ("ge", "gt", "le", "lt") if meta.get(k) is not None]
        holds = {"ge": lambda b: value >= b, "gt": lambda b: value > b, "le": lambda b: value <= b,
                 "lt": lambda b: value < b}
        if value != value or not all(holds[k](b) for k, b in bounds):  # NaN fails every bound
            sign = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
            return f"{expected} " + " and ".join(f"{sign[k]} {b:g}" for k, b in bounds)
    return None


def _fits(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, tuple) and len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    if origin is list:
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, tp)


def describe(tp: Any) -> str:
    """A type annotation in words: ``int | None`` -> "an integer or null"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"{len(args)} numbers" if all(a in (int, float) for a in args) else f"a {len(args)}-tuple"
    if origin is list:
        return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


# -- derived schemas ------------------------------------------------------------------------------

def pydantic_model(cls: type, *, name: str | None = None, exclude: tuple[str, ...] = (),
                   optional: bool = False) -> type:
    """A strict pydantic model (``extra="forbid"``, no type coercion) with ``cls``'s fields,
    types, defaults, bounds and help texts; ``exclude`` leaves fields out.

    With ``optional=True`` every field defaults to None (= not given), for request bodies whose
    omitted fields keep the server's defaults; ``model_dump(exclude_none=True)`` then gives the
    fields to pass on. The dataclass stays the judge: build it from the dump to apply its checks.
    """
    import pydantic

    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        bounds = {k: f.metadata.get(k) for k in ("ge", "gt", "le", "lt") if f.metadata.get(k) is not None}
        tp = hints[f.name]
        if optional:
            default = None
            tp = tp | None  # type: ignore[operator]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()  # type: ignore[misc]
        if typing.get_origin(tp) is tuple or any(typing.get_origin(a) is tuple for a in typing.get_args(tp)):
            bounds = {}
        fields[f.name] = (tp, pydantic.Field(default, description=f.metadata.get("help"), **bounds))
    config = pydantic.ConfigDict(strict=True, extra="forbid")
    return pydantic.create_model(name or cls.__name__.removesuffix("Options") + "Body", __config__=config,
                                 __doc__=(cls.__doc__ or "").strip(), **fields)


def add_arguments(parser: argparse.ArgumentParser, cls: type, names: tuple[str, ...] | None = None,
                  prefix: str = "") -> None:
    """One ``--flag`` per field of ``cls`` (or of ``names``); a flag not given is absent from the
    parsed namespace (``argparse.SUPPRESS``), so only what the user typed becomes an override."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if names is not None and f.name not in names:
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        tp = hints[f.name]
        helptext = f"{f.metadata.get('help', '')} (default {f.default!r})".replace("%", "%%")
        kinds = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=helptext)
        elif typing.get_origin(tp) is Literal:
            parser.add_argument(flag, dest=f.name, choices=typing.get_args(tp), default=argparse.SUPPRESS,
                                help=helptext)
        elif kinds[0] in (int, float, str):
            parser.add_argument(flag, dest=f.name, type=kinds[0], default=argparse.SUPPRESS, help=helptext)


def given(namespace: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line (see :func:`add_arguments`)."""
    return {name: getattr(namespace, name) for name in cls.field_names() if hasattr(namespace, name)}
