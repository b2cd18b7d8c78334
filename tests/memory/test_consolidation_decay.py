"""Consolidation (importance, lock, damp, EWC) and decay (fading out of replay and the log)."""

import math

import numpy as np
import pytest
import torch

from synclearn.data import chat_pairs
from synclearn.learn import Learner
from synclearn.memory import InteractionLog
from synclearn.memory.consolidate import Consolidation
from synclearn.memory.decay import Fading
from synclearn.memory.replay import uniform
from synclearn.model import MCSDConfig, build_model

TASK_A = chat_pairs(8, seed=10)
TASK_B = [{"prompt": f"Spell {w}", "response": " ".join(w)} for w in ("river", "candle", "orbit", "meadow")]


def tiny():
    return build_model(MCSDConfig(d_model=32, n_layers=3, n_channels=4, d_ff=128, predictor_rank=8), seed=0)


def test_locked_important_neurons_never_change():
    model = tiny()
    learner = Learner(model, neuron_fraction=0.2, plastic_layers=2, exploration=0.2)
    cons = Consolidation(learner, "lock", fraction=0.25)
    for _ in range(8):
        learner.step(TASK_A)
    cons.observe(TASK_A)  # served traffic: MAS sensitivity
    protected = cons.consolidate()
    assert all(n > 0 for n in protected.values())
    locked = {layer: mask.nonzero().flatten() for layer in learner.plastic_layers
              if (mask := learner.protected(layer)) is not None}
    before = {l: (model.mlps[l].up.weight[i].clone(), model.mlps[l].down.weight[:, i].clone()) for l, i in locked.items()}
    touched = set()
    for _ in range(15):
        result = learner.step(TASK_B)
        for layer, idx in result.neurons.items():
            assert not set(idx) & set(locked[layer].tolist())
            touched |= {(layer, i) for i in idx}
    assert touched  # learning went on elsewhere
    for layer, idx in locked.items():
        assert torch.equal(model.mlps[layer].up.weight[idx], before[layer][0])
        assert torch.equal(model.mlps[layer].down.weight[:, idx], before[layer][1])


def test_bounded_locks_hold_at_most_the_fraction_and_release_what_faded():
    """accumulate=False: every consolidate() locks the current top of the decayed importance, so
    the locked share never passes ``fraction`` and a neuron no step uses any more is released;
    accumulate=True keeps every earlier lock, so the share grows as the learner moves on."""
    shares = {}
    for accumulate in (True, False):
        learner = Learner(tiny(), neuron_fraction=0.1, plastic_layers=2, exploration=0.0, seed=0)
        cons = Consolidation(learner, "lock", fraction=0.2, decay=0.5, accumulate=accumulate)
        learner.protect(1, [0])  # someone else's protection, never released by the consolidation
        history = []
        for task in (TASK_A, TASK_B, chat_pairs(8, seed=11), TASK_A[:2]):
            for _ in range(3):
                learner.step(task)
            cons.consolidate()
            history.append({layer: learner.protected(layer).clone() for layer in learner.plastic_layers})
        assert all(h[1][0] for h in history)
        shares[accumulate] = [max(float(m.float().mean()) for m in h.values()) for h in history]
        if not accumulate:
            assert all(share <= (round(0.2 * 128) + 1) / 128 for share in shares[False])  # the fraction (+ the outside lock)
            for layer in learner.plastic_layers:  # the locks are the current top of the importance
                top = cons.neurons.top(layer, 0.2)
                mask = learner.protected(layer).clone()
                if layer == 1:
                    mask[0] = bool(torch.isin(torch.tensor(0), top))
                assert torch.equal(mask.nonzero().flatten(), top)
            released = history[0][2] & ~history[-1][2]
            assert released.any()  # task A's first neurons faded out of the top and are free again
    assert shares[True][-1] > (round(0.2 * 128) + 1) / 128 and shares[True][-1] > shares[False][-1]


def test_bounded_locks_never_release_a_neuron_someone_else_protected():
    learner = Learner(tiny(), neuron_fraction=0.1, plastic_layers=1, seed=0)
    cons = Consolidation(learner, "lock", fraction=0.1, accumulate=False)
    learner.protect(2, [5])
    scores = cons.neurons.scores[2]
    scores[[5, 6]] = 1.0  # both in the top: 5 was protected already, 6 is locked by the consolidation
    cons.consolidate()
    scores.zero_()
    scores[[7]] = 1.0  # both leave the top
    cons.consolidate()
    mask = learner.protected(2)
    assert mask[5] and not mask[6] and mask[7]


def test_importance_comes_from_steps_and_traffic_and_decays():
    learner = Learner(tiny(), neuron_fraction=0.1, plastic_layers=1)
    cons = Consolidation(learner, "off", decay=0.5)
    r = learner.step(TASK_A)
    scores = cons.neurons.scores[2]
    touched = torch.tensor(r.neurons[2])
    assert (scores[touched] > 0).all()
    untouched = torch.ones(128, dtype=torch.bool)
    untouched[touched] = False
    assert (scores[untouched] == 0).all()  # Fisher only where a gradient was taken
    snapshot = scores.clone()
    cons.observe(TASK_A)  # MAS adds sensitivity for every neuron that fired, after decaying
    assert (cons.neurons.scores[2][touched] >= 0.5 * snapshot[touched]).all()
    assert (cons.neurons.scores[2] > 0).sum() > len(touched)
    assert cons.consolidate() == {} and all(learner.protected(layer) is None for layer in learner.plastic_layers)  # "off" protects nothing


def test_damping_slows_important_neurons():
    results = {}
    for policy in ("off", "damp"):
        model = tiny()
        learner = Learner(model, neuron_fraction=0.3, plastic_layers=1, exploration=0.0)
        cons = Consolidation(learner, policy, strength=20.0)
        learner.step(TASK_A)
        cons.observe(TASK_A)
        cons.consolidate()
        before = model.mlps[2].up.weight.clone()
        learner.step(TASK_A)
        results[policy] = ((model.mlps[2].up.weight - before).norm().item(), learner)
    assert results["damp"][0] < 0.7 * results["off"][0]
    scale = results["damp"][1].lr_scale(2)
    assert ((scale > 0) & (scale <= 1)).all() and scale.min() < 0.5


def test_ewc_keeps_lora_parameters_near_their_consolidated_values():
    drift = {}
    for strength in (0.0, 10.0):
        torch.manual_seed(0)
        learner = Learner(tiny(), update="lora", lr=1e-2, seed=0)
        cons = Consolidation(learner, "ewc", strength=strength)
        for _ in range(5):
            learner.step(TASK_A)
        cons.observe(TASK_A)
        cons.consolidate()
        anchor = [p.detach().clone() for p in learner.params]
        for _ in range(10):
            learner.step(TASK_B)
        drift[strength] = sum((p - a).pow(2).sum().item() for p, a in zip(learner.params, anchor))
    assert drift[10.0] < 0.5 * drift[0.0]


def test_bad_consolidation_settings():
    learner = Learner(tiny())
    with pytest.raises(ValueError) as err:
        Consolidation(learner, "ewc", fraction=2, importance="vibes")
    msg = str(err.value)
    assert "fraction=2" in msg and "importance='vibes'" in msg and "sparse learners" in msg
    with pytest.raises(ValueError, match="only sparse learners"):
        Consolidation(Learner(tiny(), update="full"), "lock")


def test_faded_records_leave_replay_and_by_policy_the_log(tmp_path):
    with InteractionLog(tmp_path / "log.db") as log:
        t0 = 1_000_000.0
        ids = log.append_many([{"session_id": "s", "created_at": t0, **p} for p in chat_pairs(6, seed=1)])
        log.mark_learned(ids[:3], now=t0)
        log.mark_learned(ids[3:], now=t0 + 5 * 86_400)  # learned five days later
        fading = Fading(threshold=0.05)
        now = t0 + 5 * 86_400 + 10
        # retention exp(-t / S) with S = 1 day: the first three are at exp(-5) < 0.05, the rest ~1
        assert math.exp(-5) < 0.05 and fading.faded(log, now) == ids[:3]
        pool = fading.pool(uniform)
        rng = np.random.default_rng(0)
        for _ in range(20):
            assert set(pool(log.replay_candidates(), 3, rng, now)) <= set(ids[3:])
        assert Fading(0.05).sweep(log, now) == ids[:3] and log.count() == 6  # no deletion by default
        assert Fading(0.05, delete_from_log=True).sweep(log, now) == ids[:3]
        assert log.count() == 3 and log.get(ids[0]) is None
    with pytest.raises(ValueError, match="threshold"):
        Fading(1.5)
