"""Terminal chat over a :class:`~synclearn.chat.runtime.Runtime`: streaming answers and commands.

Type a message to get a streamed answer; lines starting with ``/`` are commands (``HELP``
lists them): learn on/off, feedback (+/-/correction), forget (the session or by text),
status, save, reset, quit. Ctrl-C during an answer stops it (that turn is not logged); at the
prompt, it ends the chat.

Everything runs against injected ``input``/``output`` streams, so tests drive the real thing.
Model output is shown with control characters replaced, so a reply cannot move the cursor
or retitle the terminal.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from synclearn.chat.compose import banner
from synclearn.chat.runtime import Conflict, NotFound, Runtime
from synclearn.memory import LogError

HELP = """\
  /learn on [batch_size]   attach the learner (it learns from this chat in the background)
  /learn off               detach it
  /+  /-                   feedback on the last answer (good / bad)
  /correct TEXT            the answer the last one should have been (alias /fix)
  /forget                  forget this whole session (log rows and their influence on the weights)
  /forget TEXT             forget this session's turns that mention TEXT
  /status                  weight version, learner steps, log size, last checkpoint
  /save                    write a checkpoint now
  /reset                   start the conversation over (the log keeps what was said)
  /help  /quit"""
_CONTROL = {c: "\ufffd" for c in [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F]}


def printable(text: str) -> str:
    """``text`` with C0 control characters (but newline and tab) and DEL replaced by U+FFFD."""
    return text.translate(_CONTROL)


def format_status(status: dict) -> str:
    """One line from :meth:`Runtime.status`."""
    learner = status.get("learner") or {}
    parts = [f"weight version {status['weight_version']}"]
    if status["attached"]:
        loss = learner.get("last_loss")
        parts.append(f"learner attached: {learner.get('steps', 0)} steps"
                     + (f", last loss {loss:.3f}" if loss is not None else ""))
    else:
        parts.append("learner off")
    parts.append(f"{status['committed_steps']} steps in total")
    parts.append(f"log {status['log_rows']} rows")
    ckpt = status.get("checkpoint")
    parts.append(f"checkpoint #{ckpt['seq']} at v{ckpt['weight_version']}" if ckpt else "no checkpoint")
    return " | ".join(parts)


def forgotten_count(report: dict) -> Any:
    """How many rows a ForgetReport dict says were forgotten ("?" when it does not say)."""
    for key in ("forgotten_count", "count", "forgotten", "ids", "forgotten_ids"):
        value = report.get(key)
        if isinstance(value, int):
            return value
        if isinstance(value, (list, tuple)):
            return len(value)
    return "?"


class TerminalChat:
    """One terminal conversation.

    Args:
        runtime: the model, log and learner.
        input, output: text streams (default: stdin/stdout).
        session_id: the log's session id (default: a new one).
        system: optional system message.
        **sampling: SamplingParams defaults (max_new_tokens, temperature, ...).
    """

    def __init__(self, runtime: Runtime, *, input: TextIO | None = None, output: TextIO | None = None,
                 session_id: str | None = None, system: str | None = None, **sampling: Any) -> None:
        self.runtime = runtime
        self.input, self.output = input or sys.stdin, output or sys.stdout
        self.chat = runtime.new_session(session_id, system=system, **sampling)

    @property
    def session_id(self) -> str:
        return self.chat.session_id

    def say(self, text: str) -> None:
        self.output.write(text + "\n")
        self.output.flush()

    def run(self, prompt: str = "you> ") -> int:
        """Read lines until EOF or /quit; returns 0."""
        self.say(f"synclearn chat | {banner(self.runtime)} | session {self.session_id}")
        self.say("/help lists the commands; /learn on attaches the learner")
        while True:
            self.output.write(prompt)
            self.output.flush()
            line = self.input.readline()
            if not line:
                self.say("")
                return 0
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if line.startswith("/"):
                if self.command(line) == "quit":
                    return 0
            else:
                self.answer(line)

    def answer(self, text: str) -> None:
        """Stream the model's answer to ``text``; Ctrl-C stops it (the turn is then not logged)."""
        if "\x00" in text:
            self.say("error: a message cannot contain a NUL character")
            return
        self.output.write("bot> ")
        pieces = self.chat.stream(text)
        try:
            for piece in pieces:
                self.output.write(printable(piece))
                self.output.flush()
        except KeyboardInterrupt:
            pieces.close()  # abandons the turn: no state change, nothing logged
            self.say(" [interrupted; not logged]")
            return
        except (LogError, ValueError, TypeError) as err:
            self.say(f"\nerror: {err}")
            return
        self.say("")

    def command(self, line: str) -> str | None:
        """Run one /command; returns "quit" to end the chat."""
        name, _, arg = line[1:].partition(" ")
        name, arg = name.lower(), arg.strip()
        try:
            return self._dispatch(name, arg)
        except NotImplementedError as err:
            self.say(f"not available: {err}")
        except (NotFound, Conflict, ValueError, LogError) as err:
            self.say(f"error: {str(err).strip(chr(39))}")
        return None

    def _dispatch(self, name: str, arg: str) -> str | None:
        rt = self.runtime
        if name in ("quit", "exit", "q"):
            return "quit"
        if name in ("help", "?"):
            self.say(HELP)
        elif name == "learn":
            self._learn(arg)
        elif name in ("+", "good"):
            out = rt.feedback(self.session_id, score=1.0)
            self.say(f"noted: answer {out['interaction_id']} was good")
        elif name in ("-", "bad"):
            out = rt.feedback(self.session_id, score=-1.0)
            self.say(f"noted: answer {out['interaction_id']} was bad")
        elif name in ("correct", "fix"):
            if not arg:
                raise ValueError("usage: /correct TEXT (the answer the last one should have been)")
            out = rt.feedback(self.session_id, correction=arg)
            self.say(f"noted: a correction for answer {out['interaction_id']}")
        elif name == "forget":
            report = rt.forget(self.session_id, match=arg) if arg else rt.forget(self.session_id, everything=True)
            self.chat.reset()  # the conversation state still holds what was said
            count = forgotten_count(report)
            self.say(f"forgot {count} turn(s) of this session ({report.get('mode', 'exact')})")
        elif name == "status":
            self.say(format_status(rt.status()))
        elif name == "save":
            manifest = rt.save()
            self.say(f"saved checkpoint #{manifest['seq']} at weight version {manifest['weight_version']}"
                     if manifest else "no checkpoint directory configured")
        elif name == "reset":
            self.chat.reset()
            self.say("conversation reset")
        else:
            self.say(f"unknown command /{name}; /help lists the commands")
        return None

    def _learn(self, arg: str) -> None:
        words = arg.split()
        if not words or words[0] not in ("on", "off"):
            raise ValueError("usage: /learn on [batch_size] | /learn off")
        if words[0] == "off":
            status = self.runtime.detach()
            self.say(f"learner off after {status['committed_steps']} steps in total")
            return
        options = {}
        if len(words) > 1:
            if not words[1].isdigit() or int(words[1]) < 1:
                raise ValueError(f"batch size must be a positive integer, got {words[1]!r}")
            options["batch_size"] = int(words[1])
        self.runtime.attach(**options)
        self.say("learner on: it learns from this chat while you talk")


def run_terminal(runtime: Runtime, *, input: TextIO | None = None, output: TextIO | None = None,
                 session_id: str | None = None, system: str | None = None, **sampling: Any) -> int:
    """Chat on ``input``/``output`` until EOF or /quit. See :class:`TerminalChat`."""
    return TerminalChat(runtime, input=input, output=output, session_id=session_id, system=system, **sampling).run()
