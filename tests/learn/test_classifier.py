"""The same Learner trains a selectable-neuron classifier on labelled batches."""

import pytest
import torch

from synclearn.learn import Learner, LearnerInputError
from synclearn.learn.batch import LabelBatch
from synclearn.model.classifier import SelectableClassifier


def blobs(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 16, generator=g) * 3
    y = torch.randint(0, 4, (n,), generator=g)
    return centers[y] + torch.randn(n, 16, generator=g), y


@pytest.mark.parametrize("update", ["sparse", "lora", "full"])
def test_classifier_learns_with_every_update_family(update):
    x, y = blobs()
    model = SelectableClassifier(d_in=16, d_model=32, d_ff=64, n_layers=2, n_classes=4)
    learner = Learner(model, update=update, neuron_fraction=0.2, lr=1e-2)
    losses = [learner.step_batch(LabelBatch(x, y)).loss for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]


def test_sparse_classifier_step_touches_only_selected_neurons_and_task_mask():
    x, y = blobs()
    model = SelectableClassifier(d_in=16, d_model=32, d_ff=64, n_layers=2, n_classes=4)
    learner = Learner(model, neuron_fraction=0.1)
    before = {n: p.clone() for n, p in model.named_parameters()}
    allowed = torch.tensor([True, True, False, False])
    keep = y < 2
    result = learner.step_batch(LabelBatch(x[keep], y[keep], allowed=allowed))
    for name, p in model.named_parameters():
        if "blocks" not in name:
            assert torch.equal(p, before[name]), name
    assert sum(result.touched.values()) <= 2 * learner.budget[1]
    with pytest.raises(LearnerInputError, match="no weighted"):
        learner.step_batch(LabelBatch(x[:4], y[:4], weights=torch.zeros(4)))


def test_bad_classifier_shape():
    with pytest.raises(ValueError, match="d_ff=0"):
        SelectableClassifier(d_ff=0)
