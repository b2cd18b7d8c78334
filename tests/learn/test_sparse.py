"""Sparse updates: only the selected neurons change, with exactly the dense gradient."""

import copy

import pytest
import torch

from synclearn.learn import Learner, LearnerInputError
from synclearn.learn.batch import build_batch, masked_loss
from synclearn.learn.sparse import gather_slice, plastic_forward
from synclearn.model import load_model, neuron_context

from .conftest import snapshot, tiny_mcsd


def neuron_params(model, layer):
    mlp = model.mlps[layer]
    return {id(w) for w in (*mlp.layout().in_weights, mlp.layout().out_weight)}


def test_only_selected_neurons_change_bitwise(examples):
    model = tiny_mcsd()
    learner = Learner(model, update="sparse", neuron_fraction=0.1, plastic_layers=2)
    before = snapshot(model)
    result = learner.step(examples)
    assert not result.skipped and result.version == 1
    assert set(result.touched) <= {1, 2}
    for layer, n in result.touched.items():
        assert 0 < n <= learner.budget[layer]
    changed_anything = False
    for name, p in model.named_parameters():
        old = before[name]
        if ".mlp.up." in name or ".mlp.down." in name:
            layer = int(name.split(".")[1])
            idx = torch.tensor(result.neurons.get(layer, []), dtype=torch.long)
            keep = torch.ones(old.shape[0] if ".up." in name else old.shape[1], dtype=torch.bool)
            keep[idx] = False
            if ".up." in name:
                assert torch.equal(p[keep], old[keep]), name
                changed_anything |= not torch.equal(p[idx], old[idx])
            else:
                assert torch.equal(p[:, keep], old[:, keep]), name
                changed_anything |= not torch.equal(p[:, idx], old[:, idx])
        else:
            assert torch.equal(p, old), f"{name} changed but is not a plastic MLP weight"
    assert changed_anything


def test_selected_slice_gradients_equal_the_dense_gradient(examples):
    model = tiny_mcsd(torch.float64)
    batch = build_batch(model.tokenizer, examples, max_seq_len=256, pad_id=256, device=torch.device("cpu"))
    layouts = model.neuron_layouts()
    picks = {1: torch.tensor([0, 5, 17, 64, 127]), 2: torch.tensor([3, 4, 100])}
    slices = {l: gather_slice(layouts[l], l, idx) for l, idx in picks.items()}
    overrides = {l: (lambda x, lo=layouts[l], sl=sl: plastic_forward(x, lo, sl)) for l, sl in slices.items()}
    with neuron_context(overrides=overrides):
        loss, _ = masked_loss(model(batch.inputs), batch)
    leaves = [leaf for sl in slices.values() for leaf in sl.leaves]
    grads = torch.autograd.grad(loss, leaves)

    ref = copy.deepcopy(model)
    for p in ref.parameters():
        p.requires_grad_(True)
    ref_loss, _ = masked_loss(ref(batch.inputs), batch)
    ref_loss.backward()
    assert torch.equal(loss, ref_loss)  # the layers' outputs are bitwise the dense ones
    g = iter(grads)
    for l, idx in picks.items():
        torch.testing.assert_close(next(g), ref.mlps[l].up.weight.grad[idx], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(next(g), ref.mlps[l].down.weight.grad[:, idx], rtol=1e-10, atol=1e-12)


def test_backward_builds_no_graph_before_the_first_plastic_layer(examples):
    model = tiny_mcsd()
    learner = Learner(model, update="sparse", plastic_layers=[2])
    seen = []
    hook = model.blocks[0].register_forward_hook(lambda m, a, out: seen.append(out[0].requires_grad))
    hook2 = model.blocks[2].register_forward_hook(lambda m, a, out: seen.append(out[0].requires_grad))
    learner.step(examples)
    hook.remove(), hook2.remove()
    # one pass: layer 0 runs once, without autograd; layer 2 selects from its own activations
    # and builds the only graph.
    assert seen == [False, True]


def test_locked_neurons_are_never_selected(examples):
    model = tiny_mcsd()
    learner = Learner(model, update="sparse", neuron_fraction=0.2, plastic_layers=1, exploration=0.3)
    first = learner.step(examples).neurons[2]
    learner.protect(2, first)
    before = model.mlps[2].up.weight[first].clone()
    for _ in range(5):
        r = learner.step(examples)
        assert not set(r.neurons.get(2, [])) & set(first)
    assert torch.equal(model.mlps[2].up.weight[first], before)


def test_optimizer_state_only_for_touched_neurons_and_bounded(examples):
    model = tiny_mcsd()
    learner = Learner(model, update="sparse", neuron_fraction=0.05, plastic_layers=1, optimizer_capacity=10, exploration=0.5)
    touched = set()
    for i in range(8):
        r = learner.step(chat_variants(examples, i))
        touched |= set(r.neurons.get(2, []))
        tracked = learner.optimizer.tracked(2)
        assert len(tracked) <= 10
        assert set(tracked) <= touched
        assert set(r.neurons.get(2, [])) <= set(tracked)  # this step's neurons are the most recent
    assert len(touched) > 10  # eviction really happened
    assert learner.optimizer.tables.keys() == {2}


def chat_variants(examples, i):
    return [{"prompt": e["prompt"] + " " * i, "response": e["response"] + "!" * i} for e in examples]


@pytest.mark.parametrize("update", ["sparse", "lora", "full"])
def test_loss_goes_down_for_every_update_family(update, examples):
    model = load_model("mcsd-tiny")
    learner = Learner(model, update=update, neuron_fraction=0.2)
    losses = [learner.step(examples).loss for _ in range(25)]
    assert losses[-1] < losses[0] - 0.3, losses


@pytest.mark.parametrize("update", ["sparse", "lora", "full"])
def test_same_seed_same_examples_bitwise_equal(update, examples):
    states = []
    for _ in range(2):
        model = tiny_mcsd()
        learner = Learner(model, update=update, seed=7, neuron_fraction=0.1)
        for i in range(4):
            learner.step(chat_variants(examples, i))
        states.append((snapshot(model), learner.state_dict()))
    (w1, s1), (w2, s2) = states
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert_nested_equal(s1, s2)


def assert_nested_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_nested_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_nested_equal(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("update", ["sparse", "full"])
def test_nan_from_the_model_skips_the_step_and_changes_nothing(update, examples):
    model = tiny_mcsd()
    learner = Learner(model, update=update, neuron_fraction=0.1)
    learner.step(examples)
    with torch.no_grad():
        model.embed.weight[ord("~")] = float("nan")  # a corrupted token embedding
    before, opt_before = snapshot(model), copy.deepcopy(learner.optimizer.state_dict())
    result = learner.step([{"prompt": "tilde?", "response": "~~~"}])
    assert result.skipped and "non-finite" in result.reason and result.version == 1
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) or torch.isnan(before[k]).any() for k in before)
    for k in before:
        assert torch.equal(torch.nan_to_num(before[k]), torch.nan_to_num(after[k]))
    assert_nested_equal(opt_before, learner.optimizer.state_dict())


def test_bad_examples_are_rejected_whole(examples):
    model = tiny_mcsd()
    learner = Learner(model)
    before = snapshot(model)
    bad_batches = [
        [*examples, {"prompt": "p", "response": "r", "weight": float("nan")}],
        [*examples, {"prompt": "p"}],
        [*examples, {"prompt": "p", "response": 3}],
        [*examples, {"prompt": "p", "response": "r", "colour": "red"}],
        [*examples, {"prompt": "p", "response": "bad \udcff"}],
        [],
        "just a string",
    ]
    for batch in bad_batches:
        with pytest.raises(LearnerInputError):
            learner.step(batch)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert learner.guard.version == 0 and learner.committed_steps == 0


def test_bad_settings_list_every_problem():
    with pytest.raises(ValueError) as err:
        Learner(tiny_mcsd(), update="magic", neuron_fraction=2, selector="best", plastic_layers=[7])
    for what in ("update='magic'", "neuron_fraction=2", "selector='best'", "plastic_layers=[7]"):
        assert what in str(err.value)


def test_plain_text_examples_and_random_and_predictor_selectors():
    for selector in ("random", "predictor"):
        model = tiny_mcsd()
        learner = Learner(model, selector=selector, neuron_fraction=0.1)
        losses = [learner.step(["the quick brown fox jumps over the lazy dog"] * 2).loss for _ in range(15)]
        assert losses[-1] < losses[0]
