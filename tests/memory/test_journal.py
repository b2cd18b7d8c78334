"""The step journal on disk: safetensors + JSON (no pickle), atomic and bounded."""

import json

import pytest
import torch
from safetensors import safe_open

from synclearn.memory.journal import StepJournal, StepRecord, decode, encode, replayable_examples


def test_records_round_trip_exactly_through_safetensors_and_json(tmp_path):
    undo = {"kind": "dense", "params": [torch.randn(3, 2), torch.arange(4)],
            "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
                          "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1], "foreach": None}]},
            "layers": {2: {"order": [5, 1], "m": None}}}
    examples = [{"id": 7, "prompt": "p", "response": "r", "weight": 0.5}, "plain text"]
    journal = StepJournal(tmp_path / "j")
    journal.record(StepRecord(0, examples, undo))
    path = journal.file(0)
    assert path.suffix == ".safetensors" and not list((tmp_path / "j").glob(".step-*"))
    with safe_open(str(path), framework="pt") as f:  # a plain safetensors file: no code runs to read it
        meta = json.loads(f.metadata()["record"])
    assert meta["examples"] == examples and meta["index"] == 0
    back = StepJournal(tmp_path / "j").load(0)  # a fresh process reads it back
    assert back.examples == examples and back.ids == {7}
    assert back.undo["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert set(back.undo["optimizer"]["state"]) == {0} and set(back.undo["layers"]) == {2}
    assert torch.equal(back.undo["params"][0], undo["params"][0]) and back.undo["params"][1].dtype == torch.long
    assert back.undo["layers"][2] == {"order": [5, 1], "m": None}


def test_encode_refuses_what_json_cannot_carry():
    with pytest.raises(TypeError, match="got object"):
        encode({"x": object()}, {})
    assert decode(encode([1, (2, 3), {"$odd": 1}], {}), {}) == [1, (2, 3), {"$odd": 1}]
    with pytest.raises(ValueError, match="needs the step's examples"):
        replayable_examples(None)


def test_bounds_drop_the_oldest_and_remember_their_ids(tmp_path):
    journal = StepJournal(tmp_path / "j", max_steps=2)
    for i in range(4):
        journal.record(StepRecord(i, [{"id": 10 + i, "prompt": "p", "response": "r"}], {"t": torch.zeros(2)}))
    assert journal.indices == [2, 3] and len(list((tmp_path / "j").glob("step-*"))) == 2
    assert journal.first_using({10}) == 0 and not journal.covers(0) and journal.covers(2)
    journal.truncate_from(3)
    assert journal.indices == [2] and journal.first_using({13}) is None
    assert not journal.empty and StepJournal(tmp_path / "empty").empty
