"""Replay: sampling distributions match their definitions; batches mix new and replayed rows."""

import math

import numpy as np
import pytest

from synclearn.memory import (
    Candidates,
    InteractionLog,
    LossPrioritized,
    RecencyWeighted,
    ReplayBatchBuilder,
    Reservoir,
    RetentionAware,
    Spaced,
    retention,
    uniform,
    weighted_sample,
)
from synclearn.memory.replay import reservoir_offer_naive, weighted_sample_naive

NOW = 1_000_000.0


def _chi2_threshold(df: int, z: float = 3.719) -> float:
    """Upper quantile of chi-square(df) at p ~ 1e-4 (Wilson-Hilferty); generous on purpose."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _assert_matches(counts: np.ndarray, probs: np.ndarray) -> None:
    """Chi-square goodness of fit of observed counts against probabilities."""
    probs = np.asarray(probs, dtype=float) / np.sum(probs)
    expected = counts.sum() * probs
    nz = expected > 0
    assert counts[~nz].sum() == 0, "drew an item whose probability is 0"
    stat = float((((counts - expected) ** 2)[nz] / expected[nz]).sum())
    assert stat < _chi2_threshold(int(nz.sum()) - 1), f"chi2={stat:.1f}, counts={counts}, expected={expected}"


def _candidates(n: int = 8) -> Candidates:
    rows = [
        dict(id=10 + i, created_at=NOW - 3600.0 * i, loss=[0.1, 2.0, None, 0.5, 0.0, 1.0, 3.0, 0.2][i % 8],
             replay_count=0, strength=3600.0 * (1 + i % 3), last_rehearsed_at=NOW - 1800.0 * i)
        for i in range(n)
    ]  # fmt: skip
    return Candidates.from_rows(rows)


def _first_draw_counts(policy, cands: Candidates, draws: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    index = {int(i): j for j, i in enumerate(cands.ids)}
    counts = np.zeros(len(cands), dtype=np.int64)
    for _ in range(draws):
        counts[index[policy(cands, 1, rng, NOW)[0]]] += 1
    return counts


def test_every_policy_returns_k_distinct_candidate_ids_deterministically():
    cands = _candidates()
    for policy in (uniform, Reservoir(5), RecencyWeighted(7200.0), LossPrioritized(), RetentionAware(), Spaced()):
        for k in (0, 1, 3, 8, 20):
            ids = policy(cands, k, np.random.default_rng(7), NOW)
            assert len(ids) == len(set(ids)) == min(k, 5 if isinstance(policy, Reservoir) else 8)
            assert set(ids) <= set(cands.ids.tolist())
            assert all(type(i) is int for i in ids)
            assert ids == policy(cands, k, np.random.default_rng(7), NOW)  # same seed, same draw


def test_uniform_is_uniform():
    cands = _candidates()
    _assert_matches(_first_draw_counts(uniform, cands, 16_000, seed=1), np.ones(8))


def test_recency_weights_halve_every_half_life():
    cands, policy = _candidates(), RecencyWeighted(half_life_s=7200.0)
    age = NOW - cands.created_at
    _assert_matches(_first_draw_counts(policy, cands, 16_000, seed=2), 0.5 ** (age / 7200.0))


def test_loss_priorities_follow_loss_plus_eps_to_the_alpha():
    cands, policy = _candidates(), LossPrioritized(alpha=0.7, eps=0.05)
    loss = np.where(np.isnan(cands.loss), 3.0, cands.loss)  # unknown loss -> largest known loss (3.0)
    _assert_matches(_first_draw_counts(policy, cands, 16_000, seed=3), (loss + 0.05) ** 0.7)


def test_retention_aware_favours_what_has_faded():
    cands, policy = _candidates(), RetentionAware(power=2.0)
    r = np.exp(-(NOW - cands.rehearsed_at) / cands.strength)
    assert r[0] == 1.0  # just rehearsed: weight 0, never drawn
    np.testing.assert_allclose(retention(cands.strength, NOW - cands.rehearsed_at), r)
    _assert_matches(_first_draw_counts(policy, cands, 16_000, seed=4), (1 - r) ** 2)
    fresh = Candidates.from_rows([dict(id=i, created_at=NOW, strength=10.0, last_rehearsed_at=NOW) for i in range(4)])
    _assert_matches(_first_draw_counts(policy, fresh, 8_000, seed=5), np.ones(4))  # all fresh -> uniform


def test_spaced_repetition_doubles_the_wait_with_each_replay():
    rows = [dict(id=i, created_at=NOW - 100.0, replay_count=c, strength=1.0, last_rehearsed_at=NOW - e)
            for i, (c, e) in enumerate([(0, 0.0), (0, 30.0), (1, 30.0), (2, 30.0), (3, 90.0)])]
    cands, policy = Candidates.from_rows(rows), Spaced(interval_s=10.0, power=1.5)
    due = np.array([0.0, 3.0, 1.5, 0.75, 90.0 / 80.0])  # elapsed / (10 * 2 ** replay_count)
    np.testing.assert_allclose(policy.weights(cands, NOW), due**1.5)
    _assert_matches(_first_draw_counts(policy, cands, 16_000, seed=6), due**1.5)
    fresh = Candidates.from_rows([dict(id=i, created_at=NOW, strength=1.0, last_rehearsed_at=NOW) for i in range(3)])
    _assert_matches(_first_draw_counts(policy, fresh, 6_000, seed=7), np.ones(3))  # nothing due -> uniform
    with pytest.raises(ValueError, match="interval_s"):
        Spaced(interval_s=0.0)


def test_weighted_sample_matches_successive_draws_exactly_defined():
    """Ordered (first, second) draws vs P(i, j) = w_i / W * w_j / (W - w_i), for both forms."""
    ids, w = np.arange(5), np.array([1.0, 2.0, 3.0, 0.5, 0.0])
    W = w.sum()
    exact = np.array([[w[i] / W * w[j] / (W - w[i]) if i != j else 0.0 for j in range(5)] for i in range(5)])
    for sampler, seed in ((weighted_sample, 11), (weighted_sample_naive, 12)):
        rng, counts = np.random.default_rng(seed), np.zeros((5, 5), dtype=np.int64)
        for _ in range(15_000):
            first, second = sampler(ids, w, 2, rng)
            counts[first, second] += 1
        _assert_matches(counts.ravel(), exact.ravel())
    assert weighted_sample(ids, w, 5, np.random.default_rng(0))[-1] == 4  # zero weight comes last
    with pytest.raises(ValueError, match="finite and >= 0"):
        weighted_sample(ids, -w, 2, np.random.default_rng(0))


def test_reservoir_vectorized_offer_equals_algorithm_r_one_by_one():
    for seed in range(20):
        res, pool, seen, rng = Reservoir(16), [], 0, np.random.default_rng(seed)
        chunks = np.array_split(np.arange(1, 301), np.random.default_rng(100 + seed).integers(1, 9, size=12).cumsum())
        for chunk in chunks:
            state = rng.bit_generator.state
            res.offer(chunk, rng)
            naive_rng = np.random.default_rng(seed)
            naive_rng.bit_generator.state = state
            pool = reservoir_offer_naive(pool, seen, 16, chunk, naive_rng)
            seen += len(chunk)
            assert res.pool.tolist() == pool


def test_reservoir_keeps_every_seen_row_with_probability_capacity_over_seen():
    n, capacity, trials = 120, 12, 2_000
    counts = np.zeros(n, dtype=np.int64)
    for t in range(trials):
        res, rng = Reservoir(capacity), np.random.default_rng(t)
        for end in (7, 30, 31, 90, n):  # fed online as the log grows
            grown = Candidates.from_rows([dict(id=i, created_at=0.0, strength=1.0) for i in range(end)])
            res(grown, 0, rng, NOW)
        assert len(res.pool) == capacity and len(set(res.pool.tolist())) == capacity
        counts[res.pool] += 1
    # Each id is in the pool with probability capacity / n: counts ~ Binomial(trials, 0.1).
    p = capacity / n
    stat = float(((counts - trials * p) ** 2 / (trials * p * (1 - p))).sum())
    assert stat < _chi2_threshold(n - 1), f"chi2={stat:.1f}"


def test_reservoir_drops_forgotten_ids():
    res = Reservoir(4)
    all_rows = Candidates.from_rows([dict(id=i, created_at=0.0, strength=1.0) for i in range(10)])
    res(all_rows, 0, np.random.default_rng(0), NOW)
    survivors = Candidates.from_rows([dict(id=i, created_at=0.0, strength=1.0) for i in range(10) if i % 2])
    ids = res(survivors, 4, np.random.default_rng(1), NOW)
    assert all(i % 2 for i in ids) and all(i % 2 for i in res.pool.tolist())


# --------------------------------------------------------------------------- batch builder


def _fill(log: InteractionLog, n: int, learned: int) -> list[int]:
    ids = [log.append(session_id=f"s{i % 3}", prompt=f"p{i}", response=f"r{i}", created_at=float(i)) for i in range(n)]
    log.mark_learned(ids[:learned], now=float(n))
    return ids


def test_batches_mix_new_and_replayed_rows_at_the_ratio(tmp_path):
    with InteractionLog(tmp_path / "log.db") as log:
        ids = _fill(log, 40, learned=20)
        builder = ReplayBatchBuilder(log, RecencyWeighted(10.0), replay_ratio=0.3, batch_size=10, seed=3)
        batch = builder.next_batch(now=100.0)
        assert all(set(e) == {"id", "prompt", "response"} for e in batch)
        assert [e["id"] for e in batch[:7]] == ids[20:27]  # 7 new, oldest first
        assert set(e["id"] for e in batch[7:]) <= set(ids[:20]) and len(batch) == 10
        assert batch[0] == {"id": ids[20], "prompt": "p20", "response": "r20"}
        assert builder.next_batch(now=100.0) == batch  # nothing changes until commit
        builder.commit(batch, losses=np.linspace(0, 1, 10), now=200.0)
        assert log.ids(learned=False) == ids[27:]
        for e in batch[7:]:
            row = log.get(e["id"])
            assert row["replay_count"] == 1 and row["last_rehearsed_at"] == 200.0 and row["loss"] is not None
        assert builder.step == 1 and builder.next_batch(now=300.0) != batch
        with pytest.raises(ValueError, match="last next_batch"):
            builder.commit(batch)


def test_short_supply_of_either_kind_is_filled_by_the_other(tmp_path):
    with InteractionLog(tmp_path / "log.db") as log:
        builder = ReplayBatchBuilder(log, uniform, replay_ratio=0.5, batch_size=4)
        assert builder.next_batch() == []  # empty log
        ids = _fill(log, 6, learned=0)
        assert [e["id"] for e in builder.next_batch()] == ids[:4]  # nothing to replay yet: all new
        builder.commit(builder.next_batch())
        b = builder.next_batch()
        assert [e["id"] for e in b[:2]] == ids[4:6] and len(b) == 4
        builder.commit(b)
        assert {e["id"] for e in builder.next_batch()} <= set(ids)  # nothing new: all replay
        assert len(builder.next_batch()) == 4


def test_batches_are_deterministic_given_seed_and_log_contents(tmp_path):
    def run(path, seed):
        with InteractionLog(path) as log:
            _fill(log, 50, learned=30)
            builder = ReplayBatchBuilder(log, LossPrioritized(), replay_ratio=0.5, batch_size=8, seed=seed)
            out = []
            for step in range(5):
                batch = builder.next_batch(now=1000.0 + step)
                out.append([e["id"] for e in batch])
                builder.commit(batch, losses=[float(e["id"] % 7) for e in batch], now=1000.0 + step)
            return out

    assert run(tmp_path / "a.db", seed=5) == run(tmp_path / "b.db", seed=5)
    assert run(tmp_path / "c.db", seed=5) != run(tmp_path / "d.db", seed=6)


def test_corrections_replace_the_response_when_asked(tmp_path):
    with InteractionLog(tmp_path / "log.db") as log:
        a = log.append(session_id="s", prompt="capital of France?", response="Lyon")
        log.set_feedback(a, score=-1.0, correction="Paris")
        assert ReplayBatchBuilder(log, batch_size=2).next_batch()[0]["response"] == "Paris"
        assert ReplayBatchBuilder(log, batch_size=2, use_corrections=False).next_batch()[0]["response"] == "Lyon"


@pytest.mark.parametrize("policy", [uniform, Reservoir(8), RecencyWeighted(), LossPrioritized(), RetentionAware(),
                                    Spaced()])
def test_every_policy_drives_the_builder(tmp_path, policy):
    with InteractionLog(tmp_path / "log.db") as log:
        _fill(log, 30, learned=10)
        builder = ReplayBatchBuilder(log, policy, replay_ratio=0.25, batch_size=8, seed=1)
        for step in range(4):  # 6 new + 2 replayed, three times; then the last 2 new + 6 replayed
            batch = builder.next_batch(now=100.0 + step)
            assert len(batch) == 8 and len({e["id"] for e in batch}) == 8
            builder.commit(batch, now=100.0 + step)
        assert log.ids(learned=False) == []
        assert sum(r["replay_count"] for r in log.iter_rows()) == 3 * 2 + 6


def test_new_rows_are_rehearsed_until_repeated_or_below_the_loss(tmp_path):
    with InteractionLog(tmp_path / "log.db") as log:
        ids = _fill(log, 8, learned=5)
        builder = ReplayBatchBuilder(log, uniform, replay_ratio=0.5, batch_size=4, seed=0, new_repeats=3,
                                     learned_loss=0.1)
        seen = []
        for step in range(2):
            batch = builder.next_batch(now=10.0 + step)
            assert [e["id"] for e in batch[:2]] == ids[5:7]  # the same two new rows, fresh replay
            seen.append([e["id"] for e in batch[2:]])
            # row 6 drops below the loss in its second step; row 5 needs all three repeats
            builder.commit(batch, losses=[0.5, 0.05 if step else 0.5, 1.0, 1.0], now=10.0 + step)
            assert set(log.ids(learned=False)) == set(ids[5:8] if step == 0 else [ids[5], ids[7]])
        assert seen[0] != seen[1]
        batch = builder.next_batch(now=20.0)
        assert [e["id"] for e in batch[:2]] == [ids[5], ids[7]]
        builder.commit(batch, losses=[1.0] * 4, now=20.0)
        assert log.ids(learned=False) == [ids[7]]  # row 5: third repeat
        log.delete([ids[7]])  # a forgotten row leaves the rehearsal with the log
        assert builder.next_batch(now=21.0) and ids[7] not in builder._repeats


def test_a_new_row_whose_loss_stopped_falling_is_learned(tmp_path):
    with InteractionLog(tmp_path / "log.db") as log:
        ids = _fill(log, 4, learned=2)
        builder = ReplayBatchBuilder(log, uniform, replay_ratio=0.5, batch_size=4, new_repeats=10, min_gain=0.2)
        # row 2 keeps improving on its best (1.0 -> 0.5 -> 0.3 -> 0.2); row 3's first step gains
        # nothing (1.0 -> 0.9), which alone does not end it; its third improves on its best (0.7),
        # then two in a row stay above 0.8 x 0.7: learned at the fifth
        losses = [(1.0, 1.0), (0.5, 0.9), (0.3, 0.7), (0.2, 0.65), (0.15, 0.6)]
        for step, (a, b) in enumerate(losses):
            batch = builder.next_batch(now=10.0 + step)
            assert [e["id"] for e in batch[:2]] == [ids[2], ids[3]]
            builder.commit(batch, losses=[a, b, 1.0, 1.0][: len(batch)], now=10.0 + step)
            assert log.ids(learned=False) == ([ids[2], ids[3]] if step < 4 else [ids[2]])
        assert builder._repeats[ids[2]] == (5, 0.15, 0)
        # no losses recorded: the plateau rule cannot tell, only the cap (10 batches) ends a row
        rid = log.append(session_id="s", prompt="p", response="r")
        for step in range(9):
            builder.commit(builder.next_batch(now=30.0 + step), now=30.0 + step)
            assert log.ids(learned=False) == ([ids[2], rid] if step < 4 else [rid])
        builder.commit(builder.next_batch(now=40.0), now=40.0)
        assert log.ids(learned=False) == []


def test_until_reproduced_ends_a_rows_rehearsal_only_when_the_model_reproduces_it(tmp_path):
    with InteractionLog(tmp_path / "log.db") as log:
        ids = _fill(log, 4, learned=2)
        builder = ReplayBatchBuilder(log, uniform, replay_ratio=0.5, batch_size=4, new_repeats=3,
                                     learned_loss=0.5, until_reproduced=True)
        # row 2: a low loss, not reproduced -> still new; reproduced at its second batch -> learned.
        # row 3: never reproduced -> learned at the cap (third batch)
        for step, flags in enumerate([[False, False], [True, False], [False]]):
            batch = builder.next_batch(now=10.0 + step)
            builder.commit(batch, losses=[0.01] * len(batch), now=10.0 + step,
                           reproduced=flags + [True] * (len(batch) - len(flags)))
            assert log.ids(learned=False) == [[ids[2], ids[3]], [ids[3]], []][step]
        # without the flags (e.g. a step whose per-example results were not kept) only the cap ends it
        ids = [log.append(session_id="s", prompt="p", response="r")]
        for step in range(3):
            builder.commit(builder.next_batch(now=20.0 + step), now=20.0 + step)
            assert (log.ids(learned=False) == ids) == (step < 2)


def test_builder_rejects_bad_settings(tmp_path):
    with InteractionLog(tmp_path / "log.db") as log:
        with pytest.raises(ValueError, match="replay_ratio"):
            ReplayBatchBuilder(log, replay_ratio=1.5)
        with pytest.raises(ValueError, match="batch_size"):
            ReplayBatchBuilder(log, batch_size=0)
        with pytest.raises(ValueError, match="new_repeats"):
            ReplayBatchBuilder(log, new_repeats=0)
        with pytest.raises(ValueError, match="learned_loss"):
            ReplayBatchBuilder(log, learned_loss=-1.0)
        with pytest.raises(ValueError, match="min_gain"):
            ReplayBatchBuilder(log, min_gain=1.5)


def _assert_same(a: Candidates, b: Candidates) -> None:
    for field in ("ids", "created_at", "loss", "replay_count", "strength", "rehearsed_at"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_incremental_candidates_equal_a_full_reload(tmp_path):
    """The cached, incrementally updated candidates match a fresh read after any mix of writes."""
    path, rng = tmp_path / "log.db", np.random.default_rng(0)
    with InteractionLog(path) as log, InteractionLog(path) as other:  # other = another process
        _assert_same(log.replay_candidates(), log.replay_candidates(fresh=True))  # empty
        for step in range(60):
            writer = other if step % 4 == 3 else log
            op = rng.integers(6)
            ids = log.ids()
            some = [int(i) for i in rng.choice(ids, size=min(len(ids), int(rng.integers(1, 6))), replace=False)]
            if op == 0 or not ids:
                writer.append_many(dict(session_id="s", prompt=f"p{step}", response="r") for _ in range(5))
            elif op == 1:
                writer.mark_learned(some, now=float(step))
            elif op == 2:
                writer.mark_replayed(some, now=float(step) + 0.5)
            elif op == 3:
                writer.record_loss(some, rng.random(len(some)))
            elif op == 4:
                writer.delete(ids=some[:2], reason="test")
            else:
                writer.set_feedback(some[0], score=1.0)
            _assert_same(log.replay_candidates(), log.replay_candidates(fresh=True))
        assert len(log.replay_candidates()) > 0


def test_candidates_updated_inserts_replaces_and_drops():
    base = Candidates.from_rows([dict(id=i, created_at=float(i), strength=1.0) for i in (2, 4, 6, 8)])
    changed = Candidates.from_rows([dict(id=i, created_at=100.0 + i, strength=2.0) for i in (9, 4, 1, 5)])
    out = base.updated(changed, drop=np.array([6, 7, 1]))
    assert out.ids.tolist() == [2, 4, 5, 8, 9]
    assert out.created_at.tolist() == [2.0, 104.0, 105.0, 8.0, 109.0]
    assert base.ids.tolist() == [2, 4, 6, 8]  # the original is untouched
