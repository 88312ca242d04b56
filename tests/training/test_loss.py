"""tga_alignment_loss: hand-computed values, the released loop in faithful mode, gradients, no host sync."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tga_fast import tga_alignment_loss
from tga_fast.training.loss import alignment_cosines


def test_hand_computed_example():
    image = torch.tensor([[0.5, 0.2], [0.1, 0.0]])  # [L=2, B=2]
    retrieved = torch.tensor([[0.3, 0.3], [0.2, 0.1]])
    terms = tga_alignment_loss(image, retrieved, progress=0.5, toxic=torch.tensor([False, True]))
    # Only sample 0 counts; divisors |L| B = 4 include the toxic sample.
    pair = 0.5 * 0.25 / 4 * (math.exp(-0.5) + math.exp(-0.1))
    hinge = 0.5**2 * 0.1 / 4 * (math.exp(0.3 - 0.5) + math.exp(0.2 - 0.1))
    assert terms.pair.item() == pytest.approx(pair, rel=1e-6)
    assert terms.hinge.item() == pytest.approx(hinge, rel=1e-6)
    assert terms.total.item() == pytest.approx(pair + hinge, rel=1e-6)


def test_schedule_and_weights():
    image = torch.full((3, 4), 0.25)
    terms = tga_alignment_loss(image, None, progress=1.0)
    assert terms.pair.item() == 0.0 and terms.hinge.item() == 0.0
    terms = tga_alignment_loss(image, image, progress=0.0, pair_weight=2.0, hinge_weight=3.0)
    assert terms.pair.item() == pytest.approx(2.0 * math.exp(-0.25))
    assert terms.hinge.item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="progress"):
        tga_alignment_loss(image, progress=1.5)


def test_all_toxic_batch_gives_zero():
    terms = tga_alignment_loss(torch.rand(2, 3), torch.rand(2, 3), progress=0.1, toxic=torch.ones(3, dtype=torch.bool))
    assert terms.total.item() == 0.0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="image_cos must be"):
        tga_alignment_loss(torch.rand(3), progress=0.0)
    with pytest.raises(ValueError, match="retrieved_cos must match"):
        tga_alignment_loss(torch.rand(2, 3), torch.rand(2, 4), progress=0.0)
    with pytest.raises(ValueError, match="toxic must be"):
        tga_alignment_loss(torch.rand(2, 3), progress=0.0, toxic=torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="not both"):
        tga_alignment_loss(torch.rand(2, 3), progress=0.0, hidden=[torch.rand(3, 4, 5)])
    with pytest.raises(ValueError, match="together"):
        tga_alignment_loss(progress=0.0, hidden=[torch.rand(3, 4, 5)])


def random_step(seed=0, layers=3, batch=3, seq_len=20, dim=16):
    """Hidden states of a student pass, spans (image, retrieved text) and caption targets."""
    gen = torch.Generator().manual_seed(seed)
    hidden = [torch.randn(batch, seq_len, dim, generator=gen, requires_grad=True) for _ in range(layers)]
    spans = torch.tensor([[[6, 14], [1, 5]], [[8, 16], [2, 7]], [[5, 17], [0, 3]]])[:batch]
    targets = torch.randn(layers, batch, dim, generator=gen)
    return hidden, spans, targets


def released_loop(hidden, spans, targets, toxic, progress, pair_weight=0.25, hinge_weight=0.1):
    """The released code's loss re-expressed: Python loops over layers and samples, slices and math.exp."""
    loss_pair, loss_hinge = 0.0, 0.0
    for layer, states in enumerate(hidden):
        for b in range(states.shape[0]):
            if toxic[b]:
                continue
            image = states[b, spans[b, 0, 0] : spans[b, 0, 1]].mean(dim=0)
            retrieved = states[b, spans[b, 1, 0] : spans[b, 1, 1]].mean(dim=0)
            caption = targets[layer, b]
            cos_image = F.cosine_similarity(image, caption, dim=0)
            cos_retrieved = F.cosine_similarity(retrieved, caption, dim=0)
            loss_pair += math.exp(-cos_image)  # a Python float: no gradient
            loss_hinge += math.exp(cos_retrieved - cos_image)
    scale = 1.0 / (len(hidden) * hidden[0].shape[0])
    return (1 - progress) * pair_weight * scale * loss_pair, (1 - progress) ** 2 * hinge_weight * scale * loss_hinge


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_faithful_mode_equals_the_released_loop():
    hidden, spans, targets = random_step()
    toxic = torch.tensor([False, True, False])
    expected_pair, expected_hinge = released_loop(hidden, spans, targets, toxic, progress=0.3)
    terms = tga_alignment_loss(hidden=hidden, spans=spans, targets=targets, progress=0.3, toxic=toxic, faithful_reference=True)
    assert terms.pair.item() == pytest.approx(expected_pair, rel=1e-5)
    assert terms.hinge.item() == pytest.approx(expected_hinge, rel=1e-5)
    assert not terms.pair.requires_grad and not terms.hinge.requires_grad


def test_default_mode_has_gradient_and_faithful_has_none():
    hidden, spans, targets = random_step(seed=1)
    toxic = torch.tensor([False, False, True])
    terms = tga_alignment_loss(hidden=hidden, spans=spans, targets=targets, progress=0.2, toxic=toxic)
    terms.total.backward()
    for states in hidden:
        assert states.grad is not None
        assert states.grad[:2].abs().sum() > 0  # non-toxic samples receive gradient in their spans
        assert states.grad[2].abs().sum() == 0  # the toxic sample receives none
        assert states.grad[0, 17:].abs().sum() == 0  # rows outside the spans receive none
        states.grad = None

    faithful = tga_alignment_loss(hidden=hidden, spans=spans, targets=targets, progress=0.2, toxic=toxic, faithful_reference=True)
    language_model_loss = sum(states.sum() for states in hidden) * 0.0  # a stand-in for L_CE
    (language_model_loss + faithful.total).backward()
    assert all(states.grad.abs().sum() == 0 for states in hidden)
    assert faithful.total.item() == pytest.approx(terms.total.item(), rel=1e-6)


def test_cosine_path_matches_hidden_path():
    hidden, spans, targets = random_step(seed=2)
    image_cos, retrieved_cos = alignment_cosines(hidden, spans, targets)
    assert image_cos.shape == retrieved_cos.shape == (3, 3)
    a = tga_alignment_loss(image_cos, retrieved_cos, progress=0.4)
    b = tga_alignment_loss(hidden=hidden, spans=spans, targets=targets, progress=0.4)
    torch.testing.assert_close(a.total, b.total)


def test_gradient_matches_autograd_through_slices():
    """The fused path's gradient equals autograd through the re-expressed loop with torch.exp."""
    hidden, spans, targets = random_step(seed=3)
    terms = tga_alignment_loss(hidden=hidden, spans=spans, targets=targets, progress=0.25)
    fused = torch.autograd.grad(terms.total, hidden)
    pair, hinge = 0.0, 0.0
    for layer, states in enumerate(hidden):
        for b in range(states.shape[0]):
            image = states[b, spans[b, 0, 0] : spans[b, 0, 1]].mean(0)
            retrieved = states[b, spans[b, 1, 0] : spans[b, 1, 1]].mean(0)
            ci = F.cosine_similarity(image, targets[layer, b], dim=0)
            cr = F.cosine_similarity(retrieved, targets[layer, b], dim=0)
            pair = pair + torch.exp(-ci)
            hinge = hinge + torch.exp(cr - ci)
    scale = 1.0 / (3 * 3)
    loop_total = 0.75 * 0.25 * scale * pair + 0.75**2 * 0.1 * scale * hinge
    expected = torch.autograd.grad(loop_total, hidden)
    for got, want in zip(fused, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_no_host_sync_traces_in_one_graph():
    """A host synchronisation (.item(), bool(), nonzero) would break the graph: fullgraph tracing proves
    there is none in the loss, with the progress given as a tensor."""
    hidden, spans, targets = random_step(seed=4)
    hidden = [h.detach() for h in hidden]

    def step(h0, h1, h2, progress, toxic):
        terms = tga_alignment_loss(hidden=[h0, h1, h2], spans=spans, targets=targets, progress=progress, toxic=toxic)
        return terms.total

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    toxic = torch.tensor([False, True, False])
    got = compiled(*hidden, torch.tensor(0.3), toxic)
    torch.testing.assert_close(got, step(*hidden, torch.tensor(0.3), toxic))


def test_excluded_samples_never_reach_the_loss_or_its_gradient():
    """A NaN cosine of a toxic (excluded) sample or of a sample without retrieved text poisons nothing."""
    image_cos = torch.tensor([[0.5, float("nan"), 0.2]], requires_grad=True)
    retrieved_cos = torch.tensor([[0.1, float("nan"), float("nan")]], requires_grad=True)
    toxic = torch.tensor([False, True, False])
    hinge_mask = torch.tensor([True, True, False])
    terms = tga_alignment_loss(image_cos, retrieved_cos, progress=0.0, toxic=toxic, hinge_mask=hinge_mask)
    terms.total.backward()
    expected_pair = 0.25 / 3 * (math.exp(-0.5) + math.exp(-0.2))
    expected_hinge = 0.1 / 3 * math.exp(0.1 - 0.5)
    assert terms.pair.item() == pytest.approx(expected_pair, rel=1e-6)
    assert terms.hinge.item() == pytest.approx(expected_hinge, rel=1e-6)
    assert torch.isfinite(image_cos.grad).all() and torch.isfinite(retrieved_cos.grad).all()
    assert image_cos.grad[0, 1] == 0 and retrieved_cos.grad[0, 1:].eq(0).all()


@pytest.mark.parametrize("layers, batch", [(0, 3), (2, 0), (0, 0)])
def test_empty_batch_or_no_layer_gives_zero(layers, batch):
    """B = 0 or |L| = 0: zero terms (not a ZeroDivisionError / IndexError / NaN), differentiable, host-sync free."""
    image_cos = torch.rand(layers, batch, requires_grad=True)
    retrieved_cos = torch.rand(layers, batch, requires_grad=True)
    toxic = torch.zeros(batch, dtype=torch.bool)
    terms = tga_alignment_loss(image_cos, retrieved_cos, progress=0.5, toxic=toxic, hinge_mask=~toxic)
    assert terms.pair.item() == 0 and terms.hinge.item() == 0
    terms.total.backward()
    assert image_cos.grad.shape == (layers, batch)
    hidden = [torch.randn(batch, 6, 4) for _ in range(layers)]
    spans = torch.tensor([[[0, 2], [2, 4]]] * batch, dtype=torch.int64).view(batch, 2, 2)
    terms = tga_alignment_loss(hidden=hidden, spans=spans, targets=torch.randn(layers, batch, 4), progress=0.0)
    assert terms.total.item() == 0 and terms.image_cos.shape == (layers, batch)
    compiled = torch.compile(lambda c, r: tga_alignment_loss(c, r, progress=0.5).total, fullgraph=True, backend="eager")
    assert compiled(image_cos.detach(), retrieved_cos.detach()).item() == 0
