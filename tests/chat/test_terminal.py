"""The terminal chat: driven through injected streams (real model, real log) and as a subprocess."""

import io
import os
import re
import subprocess
import sys

import pytest

from synclearn.chat.runtime import Runtime
from synclearn.chat.terminal import TerminalChat, printable
from synclearn.cli import main as cli_main
from tests.chat.conftest import MODEL, wait_until



class ScriptedInput(io.TextIOBase):
    """A text stream whose lines come from a script; callables in it run when reached
    (e.g. wait for the learner) and are not lines."""

    def __init__(self, script):
        self.script = list(script)

    def readable(self):
        return True

    def readline(self, size=-1):
        while self.script:
            item = self.script.pop(0)
            if callable(item):
                item()
                continue
            return item + "\n"
        return ""


def replies(output: str) -> list[str]:
    """The answers printed after each "bot> " prompt."""
    return re.findall(r"bot> (.*?)\nyou> ", output, flags=re.DOTALL)


def test_chat_feedback_learn_status_save(runtime):
    out = io.StringIO()
    chat = TerminalChat(runtime, output=out, max_new_tokens=12, temperature=0.8, seed=None)
    sid = chat.session_id
    rows = lambda: runtime.log.by_session(sid)  # noqa: E731
    script = [
        "hello there", "/+", "/correct Hi! How can I help?", "/status",
        "/learn on 1", "what is new?", "and now?",
        lambda: wait_until(lambda: runtime.learner.committed_steps >= 2, 60, what="2 learner steps"),
        "/status", "/-", "/save", "/learn off", "/learn sideways", "/frobnicate", "/help", "/reset", "/quit",
        "never read",
    ]
    chat.input = ScriptedInput(script)
    assert chat.run() == 0
    text = out.getvalue()
    logged = rows()
    assert [r["prompt"] for r in logged] == ["hello there", "what is new?", "and now?"]
    assert replies(text) == [printable(r["response"]) for r in logged]
    assert logged[0]["feedback_score"] == 1.0 and logged[0]["feedback_correction"] == "Hi! How can I help?"
    assert logged[2]["feedback_score"] == -1.0
    assert "weight version 0 | learner off | 0 steps in total | log 1 rows | no checkpoint" in text
    assert "learner attached: " in text and "learner off after" in text
    manifest = runtime.checkpoints.manifest()
    assert f"saved checkpoint #{manifest['seq']}" in text and manifest["committed_steps"] >= 2
    assert "usage: /learn on" in text and "unknown command /frobnicate" in text and "/forget TEXT" in text
    assert "never read" not in text and not runtime.attached


def test_feedback_before_any_answer_is_an_error_not_a_crash(runtime):
    out = io.StringIO()
    assert TerminalChat(runtime, input=io.StringIO("/+\n/correct x\n/correct\n"), output=out).run() == 0
    assert out.getvalue().count("error:") == 3 and runtime.log.count() == 0


class InterruptOnce(io.StringIO):
    """An output stream where the user presses Ctrl-C while the first answer is printing."""

    fired = False

    def write(self, text):
        if not self.fired and "bot> " in self.getvalue():
            self.fired = True
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_stops_an_answer_without_logging_it(runtime):
    out = InterruptOnce()
    # unseeded sampling, from printable ASCII only: the first answer always streams a piece to interrupt
    # (an END, NUL or partial UTF-8 first token would end it before any piece is written)
    chat = TerminalChat(runtime, input=io.StringIO("first\nsecond\nno\x00nul\n"), output=out, max_new_tokens=8,
                        temperature=0.8, seed=None, ban=[*range(32), *range(127, runtime.model.tokenizer.size)])
    assert chat.run() == 0
    assert "[interrupted; not logged]" in out.getvalue() and "cannot contain a NUL" in out.getvalue()
    assert [r["prompt"] for r in runtime.log.by_session(chat.session_id)] == ["second"]
    assert chat.chat.history[0]["content"] == "second" and chat.chat.busy == 0


def test_control_characters_never_reach_the_terminal():
    assert printable("a\x1b]0;pwned\x07b\tc\nd\x7f") == "a\ufffd]0;pwned\ufffdb\tc\nd\ufffd"


def test_forget_by_text_and_whole_session(runtime):
    out = io.StringIO()
    other = runtime.new_session("neighbour")
    other.send("the vault code is 31337", max_new_tokens=4, stop=["\x00"])
    chat = TerminalChat(runtime, output=out, max_new_tokens=6, temperature=0.8, seed=None)
    chat.input = ScriptedInput(["the vault code is 1234", "the sky is blue", "/forget vault code", "/status",
                                "/forget", "/forget"])
    chat.run()
    text = out.getvalue()
    assert "forgot 1 turn(s) of this session" in text and "log 2 rows" in text  # the neighbour keeps its row
    assert "forgot 0 turn(s) of this session (noop)" in text  # nothing left the second time
    assert runtime.log.by_session(chat.session_id) == []
    assert [r["prompt"] for r in runtime.log.by_session("neighbour")] == ["the vault code is 31337"]


def test_chat_command_over_stdin_resumes_from_its_checkpoint(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "synclearn.cli", "chat", "--model", MODEL, "--data", str(tmp_path / "d"),
           "--max-tokens", "6", "memory.background=none"]
    first = subprocess.run(cmd, input="hi there\n/status\n/save\n", capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "bot> " in first.stdout and "log 1 rows" in first.stdout and "saved checkpoint #1" in first.stdout
    banner = first.stdout.splitlines()[0]
    assert f"model {MODEL} | data {(tmp_path / 'd').resolve()} | learner off (sparse updates) | fresh start" in banner
    second = subprocess.run(cmd, input="/status\n/quit\n", capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "resumed from checkpoint #1 (weight version 0)" in second.stdout.splitlines()[0]
    assert "log 1 rows | checkpoint #1 at v0" in second.stdout


def test_cli_dispatcher(capsys):
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("run", "chat", "serve", "attach"))
    with pytest.raises(SystemExit):
        cli_main(["nonsense"])


def test_runtime_refuses_a_checkpoint_of_another_model(tmp_path):
    rt = Runtime.open(MODEL, tmp_path, checkpoint_every_s=0)
    rt.save()
    rt.close()
    with pytest.raises(ValueError, match="continues 'mcsd-tiny-random'"):
        Runtime.open("mcsd-small", tmp_path)
    Runtime.open("mcsd-tiny", tmp_path).close()  # another spelling of the same model


def test_runtime_takes_any_spelling_of_a_model_directory(tmp_path, monkeypatch):
    from synclearn.model import load_model, save_model

    save_model(load_model(MODEL), tmp_path / "base")
    rt = Runtime.open(tmp_path / "base", tmp_path / "data", checkpoint_every_s=0)
    rt.save()
    rt.close()
    monkeypatch.chdir(tmp_path)
    rt = Runtime.open("./data/../base/", "data", checkpoint_every_s=0)
    assert rt.base == str((tmp_path / "base").resolve()) and rt.resumed_from["seq"] == 1
    rt.close()
