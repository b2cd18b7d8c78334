"""The configuration of ``synclearn chat`` and ``synclearn serve``: the conf/ groups of
``synclearn run`` (model, learner, memory, replay, serve), composed with Hydra's compose API.

    cfg = compose_app(["model=mcsd-tiny-random", "learner.neuron_fraction=0.1"])
    rt = open_runtime(cfg)          # a Runtime on cfg.data, restoring its last checkpoint
    print(banner(rt, cfg))

``conf/chat.yaml`` is the primary config; its top-level keys (``data``, ``learn``, ``device``,
``checkpoint_every_s``, ``server.*``, ...) are documented there. The command lines' flags
(``--model``, ``--data``, ``--port``, ...) are shorthands for overrides (:func:`model_overrides`).
A mistake (a bad override, an unknown model, a checkpoint of another model) is a
:class:`UsageError`: the CLI prints its one line and exits with code 2.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"
PRIMARY = "chat"
# what load_model and pretrained_model take besides the settings that identify a model
_LOAD_ONLY = ("_target_", "cache_dir", "force", "progress", "threads", "dtype", "device", "seed")


class UsageError(Exception):
    """A mistake on the command line or in the configuration: one line, exit code 2."""


def model_options() -> list[str]:
    """The ``model`` group's options (``conf/model/*.yaml``)."""
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def quote_value(value: str) -> str:
    """``value`` as a Hydra override value (quoted when it has characters Hydra parses)."""
    if re.fullmatch(r"[\w./~:+-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def model_overrides(model: str) -> list[str]:
    """The overrides ``--model NAME_OR_DIR`` stands for: a ``model`` group option by its name,
    anything else (another name ``load_model`` knows, a model directory) through
    ``model=checkpoint model.name_or_path=...``."""
    if model in model_options() and model != "checkpoint":
        return [f"model={model}"]
    return ["model=checkpoint", f"model.name_or_path={quote_value(model)}"]


def compose_app(overrides: list[str] = (), config_name: str = PRIMARY) -> Any:
    """``conf/<config_name>.yaml`` with ``overrides`` (Hydra syntax); resolved, read-only.

    Raises:
        UsageError: a malformed override, an unknown group option or key, a missing value.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not CONF_DIR.is_dir():
        raise UsageError(f"config directory {CONF_DIR} not found: synclearn needs its source checkout "
                         "(pip install -e .)")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        message = " ".join(str(err).split()).split(" Config search path:")[0]
        raise UsageError(message) from err
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UsageError(f"missing value for {', '.join(missing)} (give it as an override, e.g. {missing[0]}=...)")
    OmegaConf.set_readonly(cfg, True)
    return cfg


def model_name(model_cfg: Any) -> str:
    """The short, canonical name of the model a ``model`` config builds (without building it):
    ``mcsd-chat`` for the default pretrained base, ``mcsd-tiny-random``, or a directory's path."""
    from synclearn.chat.runtime import canonical_model_name

    target = str(model_cfg.get("_target_", ""))
    if target.endswith("pretrained_model"):
        from synclearn.learn.pretrain import PretrainConfig, display_name

        settings = {k: v for k, v in _plain(model_cfg).items() if k not in _LOAD_ONLY}
        try:
            return display_name(PretrainConfig(**settings))
        except (TypeError, ValueError) as err:
            raise UsageError(f"model: {err}") from err
    if "name_or_path" in model_cfg:
        return canonical_model_name(model_cfg.name_or_path)
    return target


def check_model(name: str) -> None:
    """Refuse a model that is neither a known name nor a model directory, before loading anything."""
    from synclearn.learn.pretrain import PRETRAINED_NAMES
    from synclearn.model.checkpoint import RANDOM_SUFFIX
    from synclearn.model.config import NAMED_CONFIGS

    if name in PRETRAINED_NAMES or name.removesuffix(RANDOM_SUFFIX) in NAMED_CONFIGS:
        return
    path = Path(name)
    if not (path / "config.json").is_file():
        known = sorted(PRETRAINED_NAMES) + [n + RANDOM_SUFFIX for n in sorted(NAMED_CONFIGS)]
        raise UsageError(f"model {name!r} is neither a model name ({', '.join(known)}) nor a model directory "
                         "(a folder with config.json)")


def _plain(node: Any) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


def open_runtime(cfg: Any) -> Any:
    """The :class:`~synclearn.chat.runtime.Runtime` ``cfg`` describes: the model (built only when
    ``cfg.data`` has no checkpoint to restore), the learner, memory, replay policy and the
    attach and sampling defaults.

    Raises:
        UsageError: an unknown model, bad settings, a checkpoint of another model.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from synclearn.chat.runtime import Runtime
    from synclearn.options import AttachOptions, LearnerOptions, ServeOptions

    name = model_name(cfg.model)
    if "name_or_path" in cfg.model:
        check_model(str(cfg.model.name_or_path))

    def build() -> Any:
        model = instantiate(cfg.model)
        return model.to(cfg.device) if cfg.device else model

    try:
        learner = instantiate(cfg.learner)
        serve = instantiate(cfg.serve)
        memory = instantiate(cfg.memory)
        policy = instantiate(cfg.replay)
        if not isinstance(learner, LearnerOptions) or not isinstance(serve, ServeOptions):
            raise UsageError("the learner group must build synclearn.options.LearnerOptions and the serve group "
                             "synclearn.options.ServeOptions")
        sampling = serve.sampling()
        attach = AttachOptions().replace(**serve.attach_options())
        rt = Runtime.open(name, cfg.data, seed=cfg.seed, device=cfg.device, learner=learner,
                            checkpoint_every_s=cfg.checkpoint_every_s, keep=cfg.keep,
                            log_synchronous=cfg.log_sync, build_model=build, memory=memory, policy=policy,
                            attach=attach, sampling=sampling)
        try:
            serve.prepare(rt.model)  # built or restored from a checkpoint: refused now, not at the first turn
        except ValueError:
            rt.close()
            raise
        return rt
    except InstantiationException as err:
        raise UsageError(" ".join(str(err.__cause__ or err).split())) from err
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(" ".join(str(err).split())) from err


def describe_learner(rt: Any) -> str:
    """``learner attached (sparse updates)`` or ``learner off (sparse updates)``."""
    state = "attached" if rt.attached else "off"
    return f"learner {state} ({rt.learner.update} updates)"


def describe_checkpoint(rt: Any) -> str:
    """Which checkpoint the runtime resumed from, or that it started fresh."""
    m = rt.resumed_from
    if m is None:
        return "fresh start (no checkpoint)"
    return f"resumed from checkpoint #{m['seq']} (weight version {m['weight_version']})"


def describe_decode(rt: Any) -> str:
    """``decode dense``, or ``decode sparse (predictor, 10% of the neurons)``; ``, compiled`` when
    the decode step runs through torch.compile."""
    share, mode = rt.sampling.get("sparse"), rt.sampling.get("sparse_mode", "predictor")
    text = "decode dense" if share is None else f"decode sparse ({mode}, {share:.0%} of the neurons)"
    kernel = getattr(rt.model, "decode_kernel", None)
    return text + (", compiled" if kernel is not None and kernel.compiled else "")


def short_name(base: str) -> str:
    """A model's short name: its name, or the last part of its directory."""
    return Path(base).name if "/" in base or "\\" in base else base


def banner(rt: Any) -> str:
    """One line: the model's short name, the data folder, the learner state, the checkpoint."""
    return (f"model {short_name(rt.base)} | data {rt.data_dir} | {describe_learner(rt)} | {describe_checkpoint(rt)} | "
            f"{describe_decode(rt)}")
