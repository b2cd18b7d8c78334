"""Every code block of README.md runs as written.

``python`` and ``bash`` blocks are run; ``text``/``console`` blocks and bare fences (layouts,
sample output) are not code. The blocks of one ``##`` section run in document order in one
fresh temporary directory (each block its own process), so a block may use what an earlier one
of its section made: the server section starts ``synclearn serve`` in one bash block, talks to
it from a python block and stops it in the next bash block.

The rule for lines too expensive to run here (every such line is still checked, never
skipped; a line matching none of these runs as written):

* ``make run`` / ``make test`` / ``make test-all`` (the main job, the suite itself): ``make -n``
  (the recipe exists and expands) in the repository.
* ``synclearn run ...`` (an experiment takes minutes, a ``-m`` sweep hours): composed with
  ``--cfg job``, without ``-m`` and with the first value of each swept override, so every
  group, option and key of the line is checked by Hydra.
* ``synclearn pretrain ...`` (minutes): ``bash -n`` of the line and ``synclearn pretrain --help``.
* ``synclearn chat`` / ``synclearn serve`` without ``--model`` (they would pretrain the chat
  base on a fresh machine): run as written with ``--model mcsd-tiny-random`` inserted.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUN = {"python", "bash"}
NOT_CODE = {"text", "console", ""}


def readme_blocks(text: str) -> list[tuple[str, str, str]]:
    """``(section, language, code)`` for every fenced block, in order."""
    out, section = [], "(top)"
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        m = re.match(r"^```(\w*)\s*$", line)
        if m:
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            out.append((section, m.group(1), "\n".join(lines[i + 1 : j]) + "\n"))
            i = j
        i += 1
    return out


def logical_lines(code: str) -> list[str]:
    """Shell lines with ``\\`` continuations joined."""
    out, current = [], ""
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    return out


def first_values(words: list[str]) -> list[str]:
    """A sweep's overrides with the first of each comma list: ``seed=0,1,2`` -> ``seed=0``."""
    return [w.split("=", 1)[0] + "=" + w.split("=", 1)[1].split(",")[0] if "=" in w else w for w in words]


def substitute(line: str) -> tuple[str, str]:
    """``(command to run, why)`` for one shell line under the rule in the module docstring."""
    stripped = line.split("#", 1)[0].strip() if not line.lstrip().startswith("printf") else line.strip()
    m = re.match(r"^make (run|test|test-all)\b", stripped)
    if m:
        return f"make -n -C {shlex.quote(str(ROOT))} {m.group(1)}", "too expensive: make -n"
    if stripped.startswith("synclearn run"):
        words = [w for w in shlex.split(stripped)[2:] if w not in ("-m", "--multirun")]
        return "synclearn run " + " ".join(shlex.quote(w) for w in first_values(words)) + " --cfg job", \
            "too expensive: composed with --cfg job"
    if stripped.startswith("synclearn pretrain"):
        return f"bash -n -c {shlex.quote(stripped)} && synclearn pretrain --help > /dev/null", \
            "too expensive: syntax and --help"
    m = re.search(r"synclearn (chat|serve)\b", line)
    if m and "--model" not in line:
        return line.replace(m.group(0), m.group(0) + " --model mcsd-tiny-random", 1), "with a random model"
    return line, ""


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PATH"] = str(Path(sys.executable).parent) + os.pathsep + out.get("PATH", "")
    out["PYTHONPATH"] = str(ROOT) + os.pathsep + out.get("PYTHONPATH", "")
    return out


BLOCKS = readme_blocks(README.read_text())
SECTIONS = list(dict.fromkeys(s for s, lang, _ in BLOCKS if lang in RUN))


def test_every_block_is_code_or_declared_not_code():
    unknown = [(s, lang) for s, lang, _ in BLOCKS if lang not in RUN | NOT_CODE]
    assert not unknown, f"README blocks in a language this test does not run: {unknown}"
    assert SECTIONS, "no runnable README blocks found"


def test_the_rule_for_expensive_lines():
    assert substitute("make run     # the main job")[0].startswith("make -n -C ")
    cmd, _ = substitute("synclearn run -m learner=sparse,lora memory=none,replay seed=0,1,2")
    assert cmd == "synclearn run learner=sparse memory=none seed=0 --cfg job"
    assert "--model mcsd-tiny-random" in substitute("printf 'x\\n' | synclearn chat --data d")[0]
    assert substitute("synclearn chat --model mcsd-tiny-random")[1] == ""
    assert substitute("curl -s http://127.0.0.1:8765/health")[1] == ""


@pytest.mark.parametrize("section", SECTIONS)
def test_readme_section_runs(section, tmp_path):
    for i, (sec, lang, code) in enumerate(b for b in BLOCKS if b[0] == section and b[1] in RUN):
        if lang == "python":
            result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env(), capture_output=True,
                                    text=True, timeout=600)
        else:
            script = "set -eo pipefail\n" + "\n".join(substitute(line)[0] for line in logical_lines(code))
            result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env(), capture_output=True, text=True,
                                    timeout=600)
        assert result.returncode == 0, (f"README section {section!r}, block {i} ({lang}) failed with exit code "
                                        f"{result.returncode}:\n{code}\n--- stdout\n{result.stdout[-3000:]}\n"
                                        f"--- stderr\n{result.stderr[-3000:]}")
