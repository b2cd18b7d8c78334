"""The memory manager: background statistics, specificity selection, budgeted decaying protection."""

import math

import pytest
import torch

from synclearn.learn import Learner
from synclearn.learn.select import select_specificity, select_topk, specificity
from synclearn.memory import InteractionLog
from synclearn.memory.background import BACKGROUND_FILE, BackgroundStats, background_for, compute_background
from synclearn.memory.manager import MemoryManager
from synclearn.memory.protection import NeuronProtection
from synclearn.model import MCSDConfig, build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(d_ff=64):
    return build_model(MCSDConfig(d_model=16, n_layers=2, n_channels=2, d_ff=d_ff, predictor_rank=0, chunk_size=8),
                       seed=0)


def test_specificity_against_a_hand_computed_case():
    scores = torch.tensor([3.0, 3.0, 2.0, 0.0])  # batch activation mass
    background = torch.tensor([10.0, 10.0, 1.0, 1.0])  # background mean activation
    eps = 1 / 400
    p = [3 / 8, 3 / 8, 2 / 8, 0.0]
    q = [10 / 22, 10 / 22, 1 / 22, 1 / 22]
    want = [pi * math.log((pi + eps) / (qi + eps)) for pi, qi in zip(p, q)]
    got = specificity(scores, background)
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    assert want[0] < 0 < want[2]  # busier in the background than in the batch -> below 0
    assert select_topk(scores, 1).tolist() == [0]  # the busiest
    assert select_specificity(scores, 1, background=background).tolist() == [2]  # the specific one
    assert select_specificity(scores, 2, background=background).tolist() == [0, 2]  # ties: lower index
    locked = torch.tensor([False, False, True, False])
    assert select_specificity(scores, 1, locked=locked, background=background).tolist() == [0]
    assert select_specificity(scores, 4, background=background).tolist() == [0, 1, 2]  # only neurons that fired
    assert select_specificity(scores, 2).tolist() == select_topk(scores, 2).tolist()  # no background: top-k
    with pytest.raises(ValueError, match="background shape"):
        select_specificity(scores, 1, background=torch.ones(3))


def test_protection_is_per_item_bounded_and_decays_unless_rehearsed():
    prot = NeuronProtection({0: 10}, budget=0.3, half_life_steps=2.0, floor=0.25, per_item=2)
    prot.observe([1], {0: [0, 1, 2]})  # row 1's lesson: two steps
    prot.observe([1], {0: [0, 1, 3]})
    assert not prot.protected(0).any()  # still being learned: nothing protected yet
    prot.observe([2], {0: [5, 6]})  # row 1 is learned: its two most-used neurons
    assert prot.protected(0).nonzero().flatten().tolist() == [0, 1]
    prot.observe([3], {0: [7]})  # row 2 learned -> 5, 6; the budget is 3 neurons
    mask = prot.protected(0)
    assert int(mask.sum()) == 3 and mask[5] and mask[6]  # the freshest win
    for _ in range(6):  # three half-lives without rehearsal: everything fades below the floor
        prot.observe([], {0: []})
    assert not prot.protected(0).any()
    prot.observe([4, 1], {0: [9]})  # row 1 replayed: its neurons are protected again
    assert prot.protected(0).nonzero().flatten().tolist() == [0, 1]
    prot.forget([1])
    assert 1 not in prot.items
    with pytest.raises(ValueError, match="budget=1.5.*half_life_steps=0"):
        NeuronProtection({0: 10}, budget=1.5, half_life_steps=0)


def test_background_statistics_saved_beside_the_base_and_loaded(tmp_path):
    model = tiny()
    model.pretrain_info = {"path": str(tmp_path)}
    stats = background_for(model, n_tokens=1024, seq_len=64)
    assert (tmp_path / BACKGROUND_FILE).is_file() and stats.tokens >= 1024
    assert all(((m >= 0) & (r >= 0) & (r <= 1)).all() for m, r in zip(stats.mean.values(), stats.rate.values()))
    again = background_for(model, compute=False)  # loaded, not recomputed
    assert all(torch.equal(stats.mean[k], again.mean[k]) for k in stats.mean) and again.tokens == stats.tokens
    exact = compute_background(model, n_tokens=1024, seq_len=64, batch_size=1)  # window by window: same mean
    assert all(torch.allclose(stats.mean[k], exact.mean[k], rtol=1e-6) for k in stats.mean)
    moving = BackgroundStats.for_model(model, horizon=64)
    moving.load_state_dict(stats.state_dict())
    moving.observe(model, [{"prompt": "Hello!", "response": "Hi there."}])  # served traffic moves it
    assert any(not torch.equal(moving.mean[k], stats.mean[k]) for k in stats.mean)
    with pytest.raises(ValueError, match="do not fit"):
        BackgroundStats({0: 3}).load_state_dict(stats.state_dict())


def test_manager_binds_the_learner_and_reports_status(tmp_path):
    model = tiny()
    with InteractionLog(tmp_path / "log.db") as log:
        ids = [log.append(session_id="s", prompt=f"k{i}", response=f"v{i}") for i in range(6)]
        memory = MemoryManager(protection={"budget": 0.4, "half_life_steps": 50}, background_tokens=1024)
        learner = Learner(model, log, neuron_fraction=0.1, plastic_layers=2, selector="specificity", memory=memory)
        assert memory.learner is learner and learner.background(0) is not None
        first = learner.background(1)
        for rid in ids:  # each row learned in two steps, then the next one
            row = {"id": rid, "prompt": f"k{rid - 1}", "response": f"v{rid - 1}"}
            learner.step([row])
            learner.step([row])
        status = memory.status()
        assert status["selector"] == "specificity" and status["background"]["traffic_rows"] == 6
        assert not torch.equal(first, learner.background(1))  # served traffic updated it
        for layer in ("0", "1"):
            s = status["layers"][layer]
            assert s["protected"] > 0 and s["free"] + s["protected"] == s["neurons"] == 64 and s["free_share"] >= 0.6
        assert status["items_protected"] == 5 and status["lessons_open"] == 1
        state = memory.state_dict()
        other = MemoryManager(protection={"budget": 0.4, "half_life_steps": 50}, background_tokens=1024)
        Learner(tiny(), log, neuron_fraction=0.1, plastic_layers=2, memory=other).memory.load_state_dict(state)
        assert other.status()["layers"] == status["layers"]
        # a chat checkpoint (real files, weights-only load) carries the manager's state: a learner
        # restored from it and a manager bound afterwards report the same protection and background
        from synclearn.chat.checkpoint import CheckpointStore

        store = CheckpointStore(tmp_path / "ckpt")
        store.save(model, learner, base="tiny")
        again = MemoryManager(protection={"budget": 0.4, "half_life_steps": 50}, background_tokens=1024)
        _, restored, _ = store.restore(lambda m: Learner(m, log, neuron_fraction=0.1, plastic_layers=2))
        again.bind(restored)
        assert again.status()["layers"] == status["layers"] and again.traffic_rows == 6
        assert again.protection.items.keys() == memory.protection.items.keys()
        assert torch.equal(restored.background(1), learner.background(1))
    with pytest.raises(ValueError, match="replay_ratio=2.*background='vibes'.*protection="):
        MemoryManager(replay_ratio=2, background="vibes", protection={"budget": 3})


def soak(steps: int, half_life_steps: float):
    """``steps`` sparse steps: each row is new for two steps, then replayed now and then.
    Returns (model, learner, memory)."""
    model = tiny()
    memory = MemoryManager(protection={"budget": 0.4, "half_life_steps": half_life_steps}, background_tokens=1024)
    learner = Learner(model, neuron_fraction=0.1, plastic_layers=2, selector="specificity", lr=1e-2, memory=memory)

    def row(i):
        return {"id": i, "prompt": f"k{i % 97}", "response": f"v{(i * 7) % 13}"}

    for s in range(steps):
        new = s // 2
        learner.step([row(new)] + [row((new * 7 + j) % new) for j in range(3) if new])
    return model, learner, memory


def assert_half_free(memory):
    free = memory.free_share()
    assert all(share >= 0.5 for share in free.values()), free


def assert_still_learns(model, learner):
    """Weights change, and a new fact's loss falls at least half as far as it does for a learner
    that never learned anything (the same settings on a fresh model)."""
    fact = {"id": 10**6, "prompt": "What is Zoba's pet?", "response": "It's a pony."}
    before = [p.detach().clone() for p in model.parameters()]
    losses = [learner.step([fact]).loss for _ in range(40)]
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    fresh = Learner(tiny(), neuron_fraction=0.1, plastic_layers=2, lr=1e-2)
    fresh_losses = [fresh.step([fact]).loss for _ in range(40)]
    assert losses[0] - losses[-1] >= 0.5 * (fresh_losses[0] - fresh_losses[-1]) > 0, (losses, fresh_losses)


def test_soak_keeps_half_the_neurons_free_and_keeps_learning():
    model, learner, memory = soak(400, half_life_steps=20)  # 20 half-lives
    assert_half_free(memory)
    assert_still_learns(model, learner)
    assert memory.protection.steps >= 400 and len(memory.protection.items) >= 150


@pytest.fixture(scope="module")
def long_soak():
    return soak(10_000, half_life_steps=500)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_ten_thousand_step_soak_keeps_half_the_neurons_free(long_soak):
    assert_half_free(long_soak[2])  # measured: 61% of each layer free


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.xfail(strict=True, reason="open (issue 12): after 10,000 steps at lr 1e-2 a new fact's loss falls about "
                   "10% as far as on a fresh learner (0.5x asserted), 20% with a fresh optimizer on the soaked "
                   "weights; without the memory manager (top-k, no protection) 51%")
def test_ten_thousand_step_soak_still_learns_a_new_fact(long_soak):
    assert_still_learns(long_soak[0], long_soak[1])
