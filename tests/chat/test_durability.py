"""`synclearn serve` as a real process: SIGTERM writes a final checkpoint; SIGKILL during learning
loses no acknowledged turn, and a restart resumes from the last checkpoint and the log."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading

import httpx

from synclearn.chat.checkpoint import MANIFEST
from synclearn.cli import main as cli_main
from synclearn.memory import InteractionLog
from synclearn.model import load_model
from tests.chat.conftest import MODEL, openai_client, wait_until


class ServeProcess:
    """``synclearn serve --port 0`` in a child process; ``url`` is read from its first line."""

    def __init__(self, data, *args, timeout=120):
        cmd = [sys.executable, "-m", "synclearn.cli", "serve", "--model", MODEL, "--data", str(data), "--port", "0",
               *args, "memory.background=none"]  # no base-model statistics: a random model, a quick start
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout] + [lines.put(None)],
                         daemon=True).start()
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if not line or " on http://" not in line:
            self.proc.kill()
            raise AssertionError(f"serve did not start: {line!r}\n{self.proc.stderr.read()}")
        self.url = line.split(" on ", 1)[1].split()[0]

    def get(self, path):
        return httpx.get(self.url + path, timeout=30).json()

    def stop(self, sig, timeout=60):
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def manifest(data):
    return json.loads((data / "checkpoint" / MANIFEST).read_text())


def chat(client, text, stream=False):
    """(prompt, reply, interaction id) of one acknowledged turn."""
    messages = [{"role": "user", "content": text}]
    if stream:
        chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, stream=True))
        reply = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
        return text, reply, final.model_extra["synclearn"]["interaction_id"]
    comp = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    return text, comp.choices[0].message.content, comp.model_extra["synclearn"]["interaction_id"]


def test_sigterm_checkpoints_and_the_restart_resumes(tmp_path):
    data = tmp_path / "data"
    server = ServeProcess(data, "--learn", "--checkpoint-every", "0")
    try:
        client = openai_client(server.url)
        for i in range(4):
            chat(client, f"note {i}: the sky was blue", stream=i % 2 == 1)
        wait_until(lambda: server.get("/v1/learner/status")["committed_steps"] >= 1, 60, what="a learner step")
    finally:
        rc = server.stop(signal.SIGTERM)
    assert rc in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its graceful shutdown
    saved = manifest(data)
    assert saved["committed_steps"] >= 1 and saved["log"]["rows"] == 4
    again = ServeProcess(data)
    try:
        status = again.get("/v1/learner/status")
        assert status["weight_version"] == saved["weight_version"]
        assert status["committed_steps"] == saved["committed_steps"] and status["log_rows"] == 4
        assert status["checkpoint"]["seq"] == saved["seq"] and status["attached"] is False
    finally:
        again.stop(signal.SIGINT)


def test_sigkill_during_learning_keeps_every_acknowledged_turn(tmp_path):
    data = tmp_path / "data"
    server = ServeProcess(data, "--checkpoint-every", "0.2")
    acked = []
    try:
        # attach from outside, as a user would, to the server that is already running
        assert cli_main(["attach", server.url, "--idle-replay", "--batch-size", "2"]) == 0
        client = openai_client(server.url)
        for i in range(6):
            acked.append(chat(client, f"turn {i}: remember the number {i * 7}", stream=i % 2 == 0))
        wait_until(lambda: (s := server.get("/v1/learner/status"))["checkpoint"] and s["learner"]["steps"] >= 3,
                   60, what="learning and a checkpoint")
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "unfinished"}],
                                                max_tokens=64, stream=True)
        next(iter(stream))  # a turn in flight, never acknowledged
        assert server.get("/v1/learner/status")["attached"] is True
    finally:
        server.proc.kill()
        server.proc.wait(60)
    with InteractionLog(data / "log.db") as log:
        assert log.integrity_check() == "ok"
        for prompt, reply, rid in acked:
            row = log.get(rid)
            assert (row["prompt"], row["response"]) == (prompt, reply)
        rows = log.count()
    saved = manifest(data)
    load_model(data / "checkpoint" / saved["folder"] / "model")  # the checkpoint loads on its own
    again = ServeProcess(data)
    try:
        status = again.get("/v1/learner/status")
        assert status["weight_version"] == saved["weight_version"] and status["log_rows"] == rows
        assert status["committed_steps"] == saved["committed_steps"]
        _, _, rid = chat(openai_client(again.url), "still here?")
        assert rid > max(r for _, _, r in acked)
    finally:
        again.stop(signal.SIGTERM)
