"""Durability: a process appending in a loop is SIGKILLed at random moments; nothing acknowledged is lost."""

import queue
import signal
import subprocess
import sys
import threading

import numpy as np

from synclearn.memory import InteractionLog

# The child opens the log, then appends forever, printing "<id> <n>" after each
# append returns (= after commit). Texts vary in size so that some rows span
# overflow pages and the WAL is checkpointed every few hundred rows.
CHILD = r"""
import sys
from synclearn.memory import InteractionLog

path, sync, trial = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = InteractionLog(path, synchronous=sync)
print("ready", flush=True)
n = 0
while True:
    rid = log.append(session_id=f"trial{trial}", prompt=f"t{trial} n{n} " + "p" * (n * 977 % 9000),
                     response=f"r{n}", tokens=n)
    if n % 7 == 3:
        log.set_feedback(rid, score=1.0, correction=f"c{n}")
    print(rid, n, flush=True)
    n += 1
"""

TRIALS = 24


def _expected_prompt(trial: int, n: int) -> str:
    return f"t{trial} n{n} " + "p" * (n * 977 % 9000)


def _record(line: str, trial: int, acked: dict) -> bool:
    """Records a complete "<id> <n>" line as acknowledged; returns whether it was one."""
    parts = line.split()
    if not line.endswith("\n") or len(parts) != 2:
        return False
    acked[int(parts[0])] = (trial, int(parts[1]))
    return True


def _read_lines(stream, out: "queue.Queue[str | None]") -> None:
    for line in stream:
        out.put(line)
    out.put(None)  # EOF


def test_every_acknowledged_row_survives_sigkill(tmp_path):
    path = tmp_path / "log.db"
    rng = np.random.default_rng(1234)
    acked: dict[int, tuple[int, int]] = {}  # id -> (trial, n)
    for trial in range(TRIALS):
        sync = "FULL" if trial % 3 == 2 else "NORMAL"
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), sync, str(trial)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        lines: queue.Queue = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(child.stdout, lines), daemon=True)
        reader.start()
        # Kill after a random number of acknowledgements; 0 = while opening the log.
        kill_after = 0 if trial % 8 == 0 else int(rng.integers(1, 80))
        seen = 0
        try:
            if kill_after == 0:
                threading.Event().wait(float(rng.uniform(0.0, 0.3)))  # somewhere during start-up
            while seen < kill_after:
                line = lines.get(timeout=60)
                assert line is not None, f"child exited early: {child.stderr.read()}"
                seen += _record(line, trial, acked)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
            reader.join(timeout=60)
        assert child.returncode == -signal.SIGKILL
        # Everything the child printed before dying was acknowledged (complete lines only).
        while (line := lines.get(timeout=5)) is not None:
            _record(line, trial, acked)

        with InteractionLog(path) as log:
            assert log.integrity_check() == "ok"
            rows = {r["id"]: r for r in log.get_many(sorted(acked))}
            missing = sorted(set(acked) - set(rows))
            assert not missing, f"trial {trial}: acknowledged rows lost: {missing[:10]}"
            for rid, (t, n) in acked.items():
                assert rows[rid]["prompt"] == _expected_prompt(t, n) and rows[rid]["tokens"] == n
    assert len(acked) > TRIALS  # the test did exercise appends
