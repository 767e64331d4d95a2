"""The slimmable DEMUCS's dynamic pass: one masked pass at per-frame widths, not a stitching of static levels."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from exitbench.models.adapters import count_macs
from exitbench.models.registry import resolve_model
from exitbench.models.slimdemucs import build_slimdemucs, frame_select, inner


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_slimdemucs({"size": "tiny"}).eval()


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_slimdemucs({"size": "S"}).eval()


@pytest.fixture(scope="module")
def trained():
    return resolve_model("slimdemucs-s").model.eval()


def onehot(choice: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """``choice [F]`` level indices -> one-hot weights ``[1, F, L]``."""
    return F.one_hot(choice, levels).float()[None]


def router_frames(model, n: int) -> int:
    return math.ceil(n / model.config["router_hop"])


def static_levels(model, x: torch.Tensor) -> torch.Tensor:
    """Every static level's estimate ``[L, N]`` of a ``[1, N]`` input."""
    with torch.no_grad():
        return model.module(x, router=False)["estimates"][0, :, 0]


def dynamic(model, x: torch.Tensor, weights: torch.Tensor) -> dict:
    with torch.no_grad():
        return model.module.forward_dynamic(x, weights)


# -- (a) a constant choice is the static level ------------------------------------------------

@pytest.mark.parametrize("size", ["tiny", "S"])
def test_constant_choice_is_the_static_level(size, tiny, small):
    model = tiny if size == "tiny" else small
    net, n = model.module, 6123
    x = torch.randn(2, n) * 0.1
    for level, v in enumerate(model.config["widths"]):
        w = torch.zeros(2, router_frames(model, n), 4)
        w[..., level] = 1
        out = dynamic(model, x, w)
        with torch.no_grad():
            static, _ = net.forward_level(x, v, level)
        torch.testing.assert_close(out["estimate"], static, rtol=1e-5, atol=1e-5 * float(static.abs().max()))
        assert [tuple(t.shape) for t in out["widths"]] == [(2, m) for m in net.frame_counts(n)]
        for depth, widths in enumerate(out["widths"]):
            assert (widths == inner(net.encoder[depth].chout, v)).all()


# -- (b) a mixed choice is a genuinely mixed pass ---------------------------------------------

# relative error energies: the bundled (trained) S model's levels differ a lot, a random tiny one's little;
# both are orders above the float error of the constant-choice equivalence (0 here)
@pytest.mark.parametrize("which, stitch_margin, nearest_margin", [("trained", 0.1, 0.03), ("tiny", 1e-4, 1e-5)])
def test_mixed_choice_differs_from_every_stitching_of_static_levels(which, stitch_margin, nearest_margin,
                                                                   trained, tiny):
    """Per sample, the dynamic output is far from EVERY static level, so no stitching of them (with any
    boundaries, frame_select's included, which is exactly 0 away) is the dynamic output."""
    model = trained if which == "trained" else tiny
    torch.manual_seed(1)
    n = 8000
    x = torch.randn(1, n) * 0.1 * (1 + torch.sin(torch.linspace(0, 6, n)))
    nf = router_frames(model, n)
    est = static_levels(model, x)
    for choice in (torch.arange(nf) % 2 * 3, torch.arange(nf) % 4, torch.randint(0, 4, (nf,))):
        w = onehot(choice)
        dyn = dynamic(model, x, w)["estimate"][0]
        energy = dyn.pow(2).sum()
        stitched = frame_select(est, w[0], model.config["router_hop"])
        assert float((dyn - stitched).pow(2).sum() / energy) > stitch_margin
        nearest = (dyn[None] - est).pow(2).min(0).values  # the best any per-sample stitching can do
        assert float(nearest.sum() / energy) > nearest_margin
        assert float((stitched[None] - est).pow(2).min(0).values.sum()) == 0  # the old output: a stitching


@pytest.mark.parametrize("size", ["tiny", "S"])
def test_one_router_frame_changes_the_output_beyond_its_samples(size, tiny, small):
    """Widening one router frame changes the next frame's samples (LSTM state, receptive fields) and
    the last samples before it (the convs look ahead); a stitching would change that frame's samples only."""
    model = tiny if size == "tiny" else small
    hop, n, f = model.config["router_hop"], 8000, 8
    x = torch.randn(1, n) * 0.1
    base = torch.zeros(router_frames(model, n), dtype=torch.long)
    wide = base.clone()
    wide[f] = 3
    d0 = dynamic(model, x, onehot(base))["estimate"][0]
    d1 = dynamic(model, x, onehot(wide))["estimate"][0]
    diff, scale = (d1 - d0).abs(), d0.abs().max()
    assert diff[f * hop:(f + 1) * hop].max() > 0.05 * scale
    assert diff[(f + 1) * hop:(f + 2) * hop].max() > 0.05 * scale  # a frame still at level 0
    assert diff[:f * hop].max() > 0


# -- (c) realised MACs ------------------------------------------------------------------------

def flop_counter_macs(model, x: torch.Tensor, level: int) -> float:
    """FlopCounterMode's MACs of forward_level (FLOPs / 2) without the variance head, plus the analytic LSTM
    (unidirectional presets: a bidirectional one's projection Linear would be counted by both)."""
    net = model.module
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net.forward_level(x, model.config["widths"][level], level)
    counts = counter.get_flop_counts()
    flops = sum(counts["Global"].values())
    flops -= sum(counts.get("InvGammaHead", {}).values())  # the dynamic pass has no variance head
    flops -= sum(counts.get("LSTM", {}).values())  # in case a build counts it: replaced by the analytic rule
    return flops / 2 + net.frame_counts(x.shape[-1])[-1] * net.lstm_macs_per_step()


@pytest.mark.parametrize("size", ["tiny", "S"])
@pytest.mark.parametrize("n", [1, 3999, 6123])
def test_constant_choice_macs_are_the_flop_counters_count(size, n, tiny, small):
    model = tiny if size == "tiny" else small
    x = torch.randn(1, n) * 0.1
    nf = router_frames(model, n)
    router = count_macs(model.module.router, lambda: model.module.router(x)).total
    assert router == nf * model.module.router.macs_per_frame()
    for level in range(4):
        got = model.dynamic_macs(n, torch.full((nf,), level))
        assert got.shape == (model.num_blocks(n),)
        assert float(got.sum()) == flop_counter_macs(model, x, level) + router  # exact: integer counts


def per_frame_macs(model, n: int, choice: torch.Tensor) -> torch.Tensor:
    """Reference: a Python loop over every frame of every layer, LSTM step and router frame."""
    net, cfg = model.module, model.config
    s, hop, t, depth = cfg["stride"], cfg["router_hop"], model.block_size, cfg["depth"]
    nf, nb = router_frames(model, n), model.num_blocks(n)
    out = [0] * nb
    counts = net.frame_counts(n)
    for i, frames in enumerate(counts):
        enc, dec = net.encoder[i], net.decoder[depth - 1 - i]
        for m in range(frames):
            start = m * s ** (i + 1)
            v = cfg["widths"][int(choice[min(start // hop, nf - 1)])]
            out[min(start // t, nb - 1)] += enc.macs_per_frame(v) + dec.macs_per_frame(v)
    for m in range(counts[-1]):
        out[min(m * s ** depth // t, nb - 1)] += net.lstm_macs_per_step()
    for f in range(nf):
        out[f * hop // t] += net.router.macs_per_frame()
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("size", ["tiny", "S"])
def test_mixed_choice_macs_are_the_per_frame_sum_between_the_constant_choices(size, tiny, small):
    model = tiny if size == "tiny" else small
    torch.manual_seed(2)
    n = 13_579
    nf = router_frames(model, n)
    choice = torch.randint(0, 4, (nf,))
    choice[:2] = torch.tensor([0, 3])  # at least two levels
    got = model.dynamic_macs(n, choice)
    torch.testing.assert_close(got, per_frame_macs(model, n, choice), rtol=0, atol=0)
    cheapest = model.dynamic_macs(n, torch.zeros(nf, dtype=torch.long))
    dearest = model.dynamic_macs(n, torch.full((nf,), 3))
    assert cheapest.sum() < got.sum() < dearest.sum()
    assert (cheapest <= got).all() and (got <= dearest).all()
    out = dynamic(model, torch.randn(1, n) * 0.1, onehot(choice))
    torch.testing.assert_close(out["macs"][0], got, rtol=0, atol=0)


# -- (d) gradients ----------------------------------------------------------------------------

def test_gradients_reach_the_router_through_the_dynamic_pass():
    torch.manual_seed(3)
    model = build_slimdemucs({"size": "tiny"})
    net = model.module.train()
    x, target = torch.randn(2, 4000) * 0.1, torch.randn(2, 4000) * 0.1
    logits = net.router(x / (net.cfg["floor"] + net.input_scale(x)))
    weights = F.gumbel_softmax(logits, tau=1.0, hard=True)  # straight-through one-hot
    weights.retain_grad()
    out = net.forward_dynamic(x, weights)
    (out["estimate"] - target).pow(2).mean().backward()
    assert weights.grad is not None and (weights.grad != 0).sum() > weights.shape[1]
    for p in (net.router.out.weight, net.router.frontend.weight, net.router.gru.weight_hh_l0):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert net.encoder[0].conv.weight.grad.abs().sum() > 0  # and the backbone learns from it too
    # the realised MACs are linear in the weights: d(total)/d(weight of level l) grows with l
    w = onehot(torch.zeros(router_frames(model, 4000), dtype=torch.long)).requires_grad_()
    net.dynamic_macs(4000, w).sum().backward()
    per_level = w.grad[0, 0]
    assert (per_level[1:] > per_level[:-1]).all()


# -- (e) forward_all's dynamic output is the routed pass --------------------------------------

def routed(model):
    """A copy whose router's argmax varies over frames (a random init is nearly constant)."""
    model = copy.deepcopy(model)
    torch.manual_seed(4)
    torch.nn.init.normal_(model.module.router.out.weight, std=3.0)
    return model


@pytest.mark.parametrize("size", ["tiny", "S"])
def test_forward_all_dynamic_is_the_argmax_pass(size, tiny, small):
    model = routed(tiny if size == "tiny" else small)
    n = 9001
    torch.manual_seed(5)
    x = torch.randn(n) * 0.1 * (0.1 + torch.rand(n // 400 + 1).repeat_interleave(400)[:n])
    out = model.forward_all(x)
    with torch.no_grad():
        choice = model.module(x[None])["router_logits"][0].argmax(-1)
    assert len(choice.unique()) >= 2
    expect = dynamic(model, x[None], onehot(choice))
    torch.testing.assert_close(out.dynamic.estimates, expect["estimate"])
    torch.testing.assert_close(out.dynamic.macs, model.dynamic_macs(n, choice), rtol=0, atol=0)
    stitched = frame_select(out.estimates[:, 0], onehot(choice)[0], model.config["router_hop"])
    assert not torch.allclose(out.dynamic.estimates[0], stitched, rtol=1e-3, atol=1e-5)
    out.validate(4, 1, n, model.num_blocks(n))
