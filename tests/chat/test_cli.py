"""`synclearn chat` / `serve` configuration (the conf/ groups of `synclearn run`, composed with
Hydra, flags as shorthands) and their mistakes: one line on stderr, exit code 2."""

import io
import logging
import os
import socket
import subprocess
import sys

import pytest

from synclearn.chat.commands import Parser, add_runtime_args, overrides_from
from synclearn.chat.compose import CONF_DIR, UsageError, compose_app, model_name, model_overrides, open_runtime
from synclearn.cli import log_level, main as cli_main
from synclearn.options import AttachOptions, LearnerOptions, ServeOptions
from tests.chat.conftest import MODEL

FAST = "memory.background=none"  # no base-model background statistics (minutes on a random model)


def shorthand(*argv):
    ap = Parser(prog="test")
    add_runtime_args(ap)
    return overrides_from(ap.parse_args(list(argv)))


def test_chat_composes_the_run_groups_with_the_pretrained_base_by_default():
    cfg = compose_app()
    assert model_name(cfg.model) == "mcsd-chat"  # the short name, not the cache's hash path
    assert cfg.learner._target_ == "synclearn.options.LearnerOptions" and cfg.memory.new_repeats == 12
    assert cfg.replay._target_.endswith("RetentionAware") and cfg.serve.temperature == 0.7
    assert cfg.data == "synclearn-data" and cfg.server.port == 8000 and cfg.learn is False


def test_flags_are_shorthands_for_overrides():
    overrides = shorthand("--model", MODEL, "--data", "my data", "--lr", "0.01", "--update", "lora", "--learn",
                          "--temperature", "0", "memory=replay")
    assert overrides == ["model=mcsd-tiny-random", "data='my data'", "learner=lora", "learner.lr=0.01", "learn=true",
                         "serve.temperature=0.0", "memory=replay"]
    cfg = compose_app(overrides)
    assert cfg.learner["update"] == "lora" and cfg.learner.lr == 0.01 and cfg.data == "my data"
    assert cfg.memory.replay_ratio == 0.75 and cfg.memory.consolidation is None
    assert model_overrides("/some/dir") == ["model=checkpoint", "model.name_or_path=/some/dir"]
    assert model_name(compose_app(model_overrides("mcsd-tiny")).model) == "mcsd-tiny-random"  # one spelling


def test_composed_config_builds_the_runtime(tmp_path):
    cfg = compose_app(["model=mcsd-tiny-random", f"data={tmp_path}", "learner.neuron_fraction=0.1",
                       "serve.attach.poll_s=0.2", "memory=replay", "replay=uniform", "checkpoint_every_s=0", FAST])
    rt = open_runtime(cfg)
    try:
        assert rt.base == MODEL and rt.learner.update == "sparse" and rt.data_dir == tmp_path.resolve()
        # the memory group's rehearsal fields and the serve group's governor fields make the attach defaults
        assert rt.attach_defaults == AttachOptions(poll_s=0.2)
        assert rt.sampling == ServeOptions(max_new_tokens=128, temperature=0.7, top_p=0.95).sampling()
        rt.attach(max_steps=1)
        assert rt.status()["attach_options"] == {"max_steps": 1}
    finally:
        rt.close()


@pytest.mark.parametrize("argv,message", [
    (["chat", "--model", "foo"], "model 'foo' is neither a model name"),
    (["chat", "--model", MODEL, "learner=nope"], "Could not find 'learner/nope'"),
    (["chat", "--model", MODEL, "learner.neuron_fraction=2"], "neuron_fraction=2"),
    (["chat", "--model", MODEL, "learner.bogus=1"], "learner.bogus"),
    (["serve", "--model", MODEL, "--max-tokens", "0"], "max_tokens"),
    (["chat", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["chat", "model=checkpoint"], "model.name_or_path"),
    (["chat", "--model", MODEL, "--sparse-decode", "2"], "sparse_decode=2"),
    (["chat", "--model", MODEL, "--sparse-mode", "nope"], "invalid choice: 'nope'"),
])
def test_mistakes_end_in_one_line_and_exit_code_2(argv, message, tmp_path, capsys):
    assert cli_main([*argv, f"data={tmp_path}"] if "--no-such-flag" not in argv else argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"synclearn {argv[0]}: error: ") and message in err, err


@pytest.mark.parametrize("override,message", [("learner.bogus=1", "Could not override 'learner.bogus'"),
                                              ("memory=vibes", "Could not find 'memory/vibes'")])
def test_a_run_mistake_is_one_line_and_exit_code_2(override, message, capsys):
    assert cli_main(["run", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("synclearn run: error: ") and message in err, err


def test_a_busy_port_is_one_line(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert cli_main(["serve", "--model", MODEL, "--data", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err
    assert not (tmp_path / "log.db").exists()  # refused before anything was opened


def test_a_checkpoint_of_another_model_is_one_line(tmp_path, capsys):
    script = io.StringIO("/save\n")
    monkey_stdin = sys.stdin
    sys.stdin = script
    try:
        assert cli_main(["chat", "--model", MODEL, "--data", str(tmp_path), "--checkpoint-every", "0", FAST]) == 0
    finally:
        sys.stdin = monkey_stdin
    capsys.readouterr()
    assert cli_main(["chat", "--model", "mcsd-chat-random", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "continues 'mcsd-tiny-random', not 'mcsd-chat-random'" in err


def test_chat_decodes_sparse_when_asked_and_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    assert cli_main(["chat", "--model", MODEL, "--data", str(tmp_path), "--sparse-decode", "0.25",
                     "--checkpoint-every", "0", "serve.max_new_tokens=4", FAST]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "| decode sparse (predictor, 25% of the neurons) |" in first, first
    assert shorthand("--sparse-decode", "0.1", "--sparse-mode", "topk", "--compile-decode") == [
        "serve.sparse_decode=0.1", "serve.sparse_mode=topk", "serve.compile_decode=true"]


def test_traceback_only_with_verbose():
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    quiet = subprocess.run([sys.executable, "-m", "synclearn.cli", "chat", "--model", "foo"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr and quiet.stderr.count("\n") == 1
    loud = subprocess.run([sys.executable, "-m", "synclearn.cli", "-v", "chat", "--model", "foo"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "UsageError" in loud.stderr


def test_verbosity_flags_map_to_logging_levels(tmp_path, capsys):
    assert [log_level(v) for v in (-1, 0, 1, 2)] == [logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG]
    sys_stdin = sys.stdin
    sys.stdin = io.StringIO("/learn on\n/learn off\n")
    try:
        assert cli_main(["-v", "chat", "--model", MODEL, "--data", str(tmp_path), "--checkpoint-every", "0", FAST]) == 0
        assert logging.getLogger().level == logging.INFO
        assert "INFO synclearn.chat.runtime: learner attached" in capsys.readouterr().err
        sys.stdin = io.StringIO("")
        assert cli_main(["-q", "chat", "--model", MODEL, "--data", str(tmp_path), FAST]) == 0
        assert logging.getLogger().level == logging.ERROR
    finally:
        sys.stdin = sys_stdin
        logging.getLogger().setLevel(logging.WARNING)


def test_learner_group_is_learner_options():
    cfg = compose_app(["learner=lora"])
    from hydra.utils import instantiate

    options = instantiate(cfg.learner)
    assert isinstance(options, LearnerOptions) and options.update == "lora" and options.lora_rank == 8
    with pytest.raises(UsageError, match="lr=-1"):
        open_runtime(compose_app(["model=mcsd-tiny-random", "learner.lr=-1", FAST]))


CHAT_GROUPS = ("model", "learner", "memory", "replay", "serve")


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in CHAT_GROUPS
                                          for p in sorted((CONF_DIR / g).glob("*.yaml"))])
def test_every_option_of_every_group_composes_for_chat(group, option):
    from hydra.utils import instantiate

    overrides = [f"{group}={option}"] + (["model.name_or_path=mcsd-tiny-random"] if option == "checkpoint" else [])
    cfg = compose_app(overrides)
    assert isinstance(instantiate(cfg.learner), LearnerOptions)
    serve = instantiate(cfg.serve)
    assert isinstance(serve, ServeOptions) and AttachOptions(**serve.attach_options())
    assert hasattr(instantiate(cfg.memory), "attach_options") and callable(instantiate(cfg.replay))
    assert model_name(cfg.model) in ("mcsd-chat", "mcsd-tiny-random")
