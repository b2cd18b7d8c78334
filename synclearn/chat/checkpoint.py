"""Checkpoints of a serving model and its learner: written atomically, restored on start.

A checkpoint directory holds numbered folders and one manifest naming the current folder::

    DIR/checkpoint.json              the manifest; written last (:func:`synclearn.durable.atomic_write`)
    DIR/ckpt-000007/model/           save_model() output (config.json + model.safetensors), or
    DIR/ckpt-000007/weights.safetensors   every tensor of the model (LoRA or HF models; the
                                     manifest names the base model they go on top of)
    DIR/ckpt-000007/learner.pt       Learner.state_dict(): optimizer rows, committed steps,
                                     locked neurons (and the step journal's position once the
                                     learner carries one)

Each save writes a NEW folder, then swaps the manifest. A crash at any point before the
manifest's rename leaves the previous manifest pointing at an intact previous folder; a
crash after it leaves the new one complete. After the swap, every folder but the last
``keep`` saved ones (listed in the manifest's ``kept``) is removed, half-written ones too.

The manifest (``checkpoint.json``)::

    {"format": 1, "seq": 7, "folder": "ckpt-000007", "model": "dir" | "weights",
     "base": "mcsd-tiny", "seed": 0, "update": "sparse", "weight_version": 37,
     "committed_steps": 37, "saved_at": <unix s, when the snapshot was taken>,
     "kept": ["ckpt-000006", "ckpt-000007"], "log": {"rows": 120, "max_id": 131, "seq": 512}}

``log.seq`` is the log's change counter at the snapshot: rows first learned after it are not in
the saved weights (``InteractionLog.unlearn_after``).

A save holds the learner's step lock throughout, so weights and optimizer rows are from the
same step and saves never overlap; serving keeps going (it only reads the weights). The lock
is reentrant: ``learner.persist`` may save from inside a forget.

Restore loads the model and the learner state, finishes or discards a forget that a crash
interrupted (``Learner.recover``), and drops step-journal entries at or past the checkpoint's
``committed_steps``: those steps are not in the restored weights.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model

from synclearn.durable import atomic_write, atomic_write_text, fsync_dir, remove_temporaries
from synclearn.learn.guard import guard_for
from synclearn.model import load_model, save_model

MANIFEST = "checkpoint.json"
FORMAT = 1
_FOLDER = re.compile(r"^ckpt-(\d{6,})$")


def _is_plain_mcsd(model: Any, learner: Any) -> bool:
    """True when ``save_model`` can write the model as a self-contained directory."""
    from synclearn.model import MCSDLM

    return isinstance(model, MCSDLM) and getattr(learner, "update", None) != "lora"


class CheckpointStore:
    """Saves and restores (model, learner) pairs under ``root``.

    Args:
        root: the checkpoint directory (created on first save).
        keep: how many checkpoint folders to keep (>= 1; the manifest's is always kept).
    """

    def __init__(self, root: str | os.PathLike, keep: int = 2) -> None:
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep={keep!r} (expected an integer >= 1)")
        self.root, self.keep = Path(root), keep

    def manifest(self) -> dict | None:
        """The current manifest, or None when nothing was saved yet."""
        path = self.root / MANIFEST
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: checkpoint format {data.get('format')!r}, this synclearn reads {FORMAT}")
        return data

    # -- save -------------------------------------------------------------------------------------
    def save(self, model: Any, learner: Any, *, base: str, seed: int = 0, log: Any = None) -> dict:
        """Write a checkpoint of ``model`` and ``learner``; returns the new manifest.

        Args:
            model: the served model. learner: its :class:`~synclearn.learn.Learner`.
            base: what ``load_model`` was given to build the model (recorded for restore).
            seed: the seed ``load_model`` used for a named size.
            log: the InteractionLog, to record its size in the manifest (optional).
        """
        with learner.exclusive():  # no step or forget during the save; saves are serialized by it too
            self.root.mkdir(parents=True, exist_ok=True)
            previous = self.manifest()
            seq = max([previous["seq"] if previous else 0, *self._folder_seqs()]) + 1
            folder = self.root / f"ckpt-{seq:06d}"
            folder.mkdir()
            plain = _is_plain_mcsd(model, learner)
            saved_at = time.time()
            version = guard_for(model).version
            if plain:
                save_model(model, folder / "model")
            else:
                atomic_write(folder / "weights.safetensors", lambda tmp: st_save_model(model, tmp))
            state = learner.state_dict()
            atomic_write(folder / "learner.pt", lambda tmp: torch.save(state, tmp))
            fsync_dir(folder)
            kept = [f for f in (previous or {}).get("kept", []) if (self.root / f).is_dir()]
            manifest = {"format": FORMAT, "seq": seq, "folder": folder.name, "model": "dir" if plain else "weights",
                        "base": str(base), "seed": int(seed), "update": learner.update, "weight_version": version,
                        "committed_steps": learner.committed_steps, "saved_at": saved_at,
                        "kept": (kept + [folder.name])[-self.keep:]}
            if log is not None:
                ids = log.ids()
                manifest["log"] = {"rows": len(ids), "max_id": ids[-1] if ids else None, "seq": log.change_seq()}
            atomic_write_text(self.root / MANIFEST, json.dumps(manifest, indent=2))
            self._prune(manifest["kept"])
            return manifest

    def _folder_seqs(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return [int(m.group(1)) for p in self.root.iterdir() if (m := _FOLDER.match(p.name))]

    def _prune(self, kept: list[str]) -> None:
        """Remove folders no manifest keeps (older ones, and any a crash left half-written)."""
        for p in self.root.iterdir():
            if _FOLDER.match(p.name) and p.name not in kept:
                shutil.rmtree(p, ignore_errors=True)
        remove_temporaries(self.root, MANIFEST)  # temp files of an interrupted manifest write

    # -- restore ----------------------------------------------------------------------------------
    def restore(self, build_learner: Callable[[Any], Any], *, device: str | None = None) -> tuple[Any, Any, dict]:
        """Load the current checkpoint: ``(model, learner, manifest)``.

        Args:
            build_learner: ``model -> Learner`` with the serving settings; it must use the
                update family the checkpoint was written with.
            device: where to put the model.

        Raises:
            FileNotFoundError: there is no checkpoint.
            ValueError: the learner's update family differs from the checkpoint's.
        """
        manifest = self.manifest()
        if manifest is None:
            raise FileNotFoundError(f"no {MANIFEST} in {self.root}")
        folder = self.root / manifest["folder"]
        if manifest["model"] == "dir":
            model = load_model(folder / "model", device=device)
        else:
            model = load_model(manifest["base"], seed=manifest["seed"], device=device)
        learner = build_learner(model)
        if learner.update != manifest["update"]:
            raise ValueError(f"the checkpoint in {self.root} was written by a {manifest['update']!r} learner; "
                             f"this one uses {learner.update!r}")
        if manifest["model"] == "weights":  # after build_learner: LoRA adapters exist only then
            missing, unexpected = st_load_model(model, str(folder / "weights.safetensors"), strict=False)
            if missing or unexpected:
                raise ValueError(f"{folder}: weights do not match the model: missing {missing}, unexpected {unexpected}")
        state = torch.load(folder / "learner.pt", map_location=model.device, weights_only=True)
        learner.load_state_dict(state)
        if learner.journal is not None:
            learner.recover()  # a forget interrupted by the crash: forward or back, per the state
            learner.journal.truncate_from(learner.committed_steps)  # steps the weights do not hold
        guard_for(model).version = int(manifest["weight_version"])  # versions keep rising across restarts
        return model, learner, manifest
