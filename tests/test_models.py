"""Reference architectures: contract shapes, inverse-gamma accumulation, MACs (test_adapters checks them
against the public measure_macs helper)."""

from __future__ import annotations

import pytest
import torch

from exitbench.models.checkpoint import load_checkpoint, save_checkpoint
from exitbench.models.layers import accumulate_inverse_gamma, block_mean, block_power, frame_block_index
from exitbench.models.press import build_press
from exitbench.models.adapters import measure_macs
from exitbench.models.registry import resolve_model
from exitbench.models.slimdemucs import build_slimdemucs, frame_select




@pytest.fixture(scope="module")
def press():
    torch.manual_seed(0)
    return build_press({"size": "S"}).eval()


@pytest.fixture(scope="module")
def slim():
    torch.manual_seed(0)
    return build_slimdemucs({"size": "S"}).eval()


@pytest.mark.parametrize("n", [2000, 4000, 5001, 1999, 137])
def test_press_shapes_and_contract(press, n):
    out = press.forward_all(torch.randn(n) * 0.1)
    b = press.num_blocks(n)
    out.validate(press.num_levels, 2, n, b)
    assert out.estimates.shape == (4, 2, n)
    assert (out.alpha > press.config["alpha_min"]).all() and (out.beta > 0).all()
    assert press.levels == ("exit1", "exit2", "exit3", "exit4")


def test_press_mean_variance_non_increasing_across_exits(press):
    torch.manual_seed(1)
    # randomise the heads so that the test is not passed by zero-initialised increments
    net = build_press({"size": "tiny"}).eval()
    for head in net.module.var_heads:
        torch.nn.init.normal_(head.net[2].weight, std=2.0)
        torch.nn.init.normal_(head.net[2].bias, std=2.0)
    for _ in range(3):
        out = net.forward_all(torch.randn(7000) * torch.rand(1))
        mean = out.beta / (out.alpha - 1)
        assert (mean[1:] <= mean[:-1] * (1 + 1e-6)).all()
        assert (out.alpha[1:] >= out.alpha[:-1]).all()
        assert not torch.allclose(mean[1:], mean[:-1])


def test_accumulation_rule_exact():
    raw = [torch.tensor([[0.3], [0.5]]), torch.tensor([[-1.0], [2.0]])]
    ref = torch.tensor([4.0])
    alpha, beta = accumulate_inverse_gamma(raw, ref, alpha_min=2.0, eps=0.0)
    sp = torch.nn.functional.softplus
    a0 = 2.0 + sp(torch.tensor(0.3))
    a1 = a0 + sp(torch.tensor(-1.0))
    m0 = 4.0 * torch.exp(torch.tensor(0.5))
    m1 = m0 * torch.exp(-sp(torch.tensor(2.0)))
    torch.testing.assert_close(alpha[:, 0], torch.stack([a0, a1]))
    torch.testing.assert_close(beta[:, 0], torch.stack([m0 * (a0 - 1), m1 * (a1 - 1)]))


def test_press_forward_upto_matches_forward_all(press):
    x = torch.randn(1, 4500)
    with torch.no_grad():
        full = press.module(x)
        part = press.module(x, upto=1)
    torch.testing.assert_close(part["estimates"][:, 0], full["estimates"][:, 1])
    torch.testing.assert_close(part["alpha"], full["alpha"][:, :2])


@pytest.mark.parametrize("chunked", ["false", "true"])
def test_press_inference_writes_in_place_and_gives_the_bits_of_the_autograd_form(chunked):
    """Without autograd channel norm and residual reuse their buffers on the CPU (benchmarks/bench_cpu_forward.py):
    every output equal, bit for bit, to the pass with autograd on, which takes the plain forms."""
    model = resolve_model("press-s", {"chunked": chunked}).model
    x = model._input(0.1 * torch.randn(13_000, generator=torch.Generator().manual_seed(5)))
    with torch.inference_mode():
        fast = model.module(x)
    with torch.enable_grad():
        plain = model.module(x)
    assert plain["estimates"].requires_grad  # the autograd forms really ran
    for key in ("estimates", "alpha", "beta"):
        assert torch.equal(fast[key], plain[key].detach()), key


@pytest.mark.parametrize("base", [2, 3])
def test_press_reach_is_the_dilations_and_base_3_keeps_the_cost(base):
    """An impulse moves the deepest exit's output within reach_samples of it and nowhere beyond; base 3
    reaches further than base 2 at the same MACs and parameters."""
    torch.manual_seed(0)
    model = build_press({"size": "tiny", "dilation_base": base, "num_exits": 2})
    for p in model.module.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    n, at = 8000, 4000
    x = torch.randn(n) * 0.1
    y = x.clone()
    y[at] += 1.0
    moved = (model.forward_all(y).estimates[-1] - model.forward_all(x).estimates[-1]).abs().amax(0) > 1e-7
    where = torch.nonzero(moved).squeeze(1)
    reach = model.reach_samples(1)
    assert int(where.min()) >= at - reach and int(where.max()) <= at + reach
    stride = model.config["enc_stride"]
    assert int(where.max()) > at + reach - 3 * stride  # the bound is tight, not loose
    base2 = build_press({"size": "tiny", "num_exits": 2})
    assert model.macs_per_sample(1) == base2.macs_per_sample(1)
    assert model.num_parameters() == base2.num_parameters()
    if base == 3:
        assert reach > base2.reach_samples(1)


def test_press_parameters_per_level(press):
    counts = [press.num_parameters(i) for i in range(4)]
    assert counts == sorted(counts) and counts[-1] < press.num_parameters()
    assert 100_000 < press.num_parameters() < 650_000


@pytest.mark.parametrize("name,levels", [("press-s", 4), ("press-m", 6)])
def test_bundled_press_checkpoint_resolves(name, levels):
    resolved = resolve_model(name)
    out = resolved.model.forward_all(torch.randn(3000))
    out.validate(levels, 2, 3000, 2)


def test_checkpoint_roundtrip(tmp_path, press):
    path = tmp_path / "p.pt"
    model = build_press({"size": "tiny"})
    save_checkpoint(path, "press", model.config, model.module.state_dict(), {"step": 3})
    loaded = resolve_model(str(path)).model
    x = torch.randn(2100)
    torch.testing.assert_close(loaded.forward_all(x).estimates, model.eval().forward_all(x).estimates)


def test_checkpoint_stored_in_float16_loads_its_rounded_weights_in_float32(tmp_path):
    # a shipped model may store its weights in half precision: the module stays float32 and computes
    # with exactly the rounded weights
    model = build_press({"size": "tiny"})
    path = tmp_path / "half.pt"
    save_checkpoint(path, "press", model.config, model.module.state_dict(), {"step": 3}, storage_dtype=torch.float16)
    ckpt = load_checkpoint(path)
    assert ckpt.metadata["storage_dtype"] == "float16" and ckpt.metadata["step"] == 3
    assert all(v.dtype == torch.float16 for v in ckpt.state_dict.values() if v.is_floating_point())
    loaded = resolve_model(str(path)).model
    for name, value in loaded.module.state_dict().items():
        want = model.module.state_dict()[name]
        assert value.dtype == want.dtype
        if want.is_floating_point():
            torch.testing.assert_close(value, want.half().float(), rtol=0, atol=0)
    save_checkpoint(tmp_path / "full.pt", "press", model.config, model.module.state_dict())
    assert path.stat().st_size < 0.75 * (tmp_path / "full.pt").stat().st_size


def test_block_helpers():
    x = torch.arange(10.0)[None]  # frames 0..9, hop 3, blocks of 6 samples, 25 samples
    idx = frame_block_index(10, 3, 6, 25)
    assert idx.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert block_mean(x, idx, 5).tolist() == [[0.5, 2.5, 4.5, 6.5, 8.5]]
    sig = torch.ones(7) * 2
    assert block_power(sig, 3).tolist() == [4.0, 4.0, 4.0]


# -- slimmable DEMUCS -----------------------------------------------------------------------

@pytest.mark.parametrize("n", [4000, 8001, 1234])
def test_slim_shapes_and_contract(slim, n):
    out = slim.forward_all(torch.randn(n) * 0.1)
    b = slim.num_blocks(n)
    out.validate(4, 1, n, b)
    assert slim.levels == ("uf0.125", "uf0.25", "uf0.5", "uf1.0")
    assert out.dynamic is not None and out.dynamic.level_share.shape == (b, 4)
    torch.testing.assert_close(out.dynamic.level_share.sum(-1), torch.ones(b, dtype=torch.float64))


def test_slim_dynamic_is_the_routed_pass_with_realised_macs(slim):
    n = 10_000
    with torch.no_grad():
        logits = slim.module(torch.randn(1, 1), router=True)  # smoke: tiny input works
    x = torch.randn(n) * 0.1
    out = slim.forward_all(x)
    with torch.no_grad():
        choice = slim.module(x[None])["router_logits"][0].argmax(-1)
        weights = torch.nn.functional.one_hot(choice, 4).float()[None]
        expect = slim.module.forward_dynamic(x[None], weights)["estimate"]
    torch.testing.assert_close(out.dynamic.estimates, expect)
    realised = slim.dynamic_macs(n, choice)
    torch.testing.assert_close(out.dynamic.macs, realised, rtol=0, atol=0)
    # the long-input limit per sample is close to the realised count (which pays the padded frames)
    hop = slim.config["router_hop"]
    per = torch.tensor([slim.macs_per_sample(c) for c in choice.tolist()], dtype=torch.float64)
    lens = torch.tensor([min(hop, n - i * hop) for i in range(len(choice))], dtype=torch.float64)
    limit = (per * lens).sum() + n * slim.router_macs_per_sample()
    assert float(realised.sum()) == pytest.approx(float(limit), rel=0.05)
    assert logits["router_logits"].shape == (1, 1, 4)
    assert torch.isfinite(logits["estimates"]).all()


def test_frame_select_mixes_by_weights():
    est = torch.stack([torch.zeros(5), torch.ones(5)])  # L=2, N=5
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])  # 3 frames of 2
    assert frame_select(est, w, 2).tolist() == [0, 0, 1, 1, 0.5]


def test_slim_router_macs_match_the_toolkits_count(slim):
    """The router's GRU is counted by exitbench.models.adapters' analytic rule (FlopCounterMode cannot see it)."""
    n = 64_000
    measured = measure_macs(slim.module.router, torch.randn(1, n))[0]
    assert measured == pytest.approx(slim.router_macs_per_sample(), rel=0.01)


def test_slim_levels_share_one_weight_set_and_cost_grows(slim):
    macs = [slim.macs_per_sample(i) for i in range(4)]
    params = [slim.num_parameters(i) for i in range(4)]
    assert macs == sorted(macs) and params == sorted(params)
    assert params[-1] <= slim.num_parameters()
    # the widest level touches every conv weight: all parameters but the other heads and the router
    unused = sum(p.numel() for p in slim.module.router.parameters())
    unused += sum(sum(p.numel() for p in h.parameters()) for h in slim.module.var_heads[:-1])
    assert params[-1] == slim.num_parameters() - unused


def test_recalibration_is_identity_at_one_and_keeps_mean_variance_non_increasing():
    from exitbench.models.layers import recalibrate

    torch.manual_seed(3)
    alpha = 2.0 + torch.rand(4, 2, 5).cumsum(0)
    mean = (torch.rand(4, 2, 5) * 0.9 + 0.05).cumprod(0)  # non-increasing over levels
    beta = mean * (alpha - 1)
    a1, b1 = recalibrate(alpha, beta, {"shape": [1.0] * 4, "scale": [1.0] * 4}, monotone=True)
    torch.testing.assert_close((a1, b1), (alpha, beta))
    a2, b2 = recalibrate(alpha, beta, {"shape": [0.5, 1, 1, 2], "scale": [1.0, 3.0, 1.0, 9.0]}, monotone=True)
    assert (a2 > 1).all()
    m2 = b2 / (a2 - 1)
    assert (m2[1:] <= m2[:-1] + 1e-6).all()
    torch.testing.assert_close(m2[0], mean[0])


def test_recalibration_power_shrinks_the_variance_relative_to_the_mixture():
    from exitbench.models.layers import recalibrate

    torch.manual_seed(4)
    alpha = 2.0 + torch.rand(3, 2, 6)
    mean = torch.rand(3, 2, 6) * 0.1 + 1e-3
    beta = mean * (alpha - 1)
    power = torch.rand(6) + 0.5  # each block's mixture power
    base = {"shape": [1.0, 2.0, 0.5], "scale": [1.0, 4.0, 0.5]}
    same = recalibrate(alpha, beta, {**base, "power": [1.0] * 3}, monotone=False, ref_power=power)
    torch.testing.assert_close(same, recalibrate(alpha, beta, base, monotone=False))
    a, b = recalibrate(alpha, beta, {**base, "power": [0.0, 0.5, 1.0]}, monotone=False, ref_power=power)
    m = b / (a - 1)
    torch.testing.assert_close(m[0], (power + 1e-12).expand(2, 6))  # power 0: the mixture's power, scaled
    torch.testing.assert_close(m[1], 4.0 * (power + 1e-12) * (mean[1] / (power + 1e-12)) ** 0.5)
    with pytest.raises(ValueError, match="mixture power"):
        recalibrate(alpha, beta, {**base, "power": [1.0] * 3}, monotone=False)


def test_checkpoint_metadata_with_numpy_scalars_loads_with_weights_only(tmp_path):
    import numpy as np

    from exitbench.models.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "c.pt", "press", {"scale": [np.float64(1.5)]}, {"w": torch.ones(2)},
                    {"ks": np.float32(0.25), "step": np.int64(7)})
    ck = load_checkpoint(tmp_path / "c.pt")
    assert ck.config["scale"] == [1.5] and ck.step == 7 and abs(ck.metadata["ks"] - 0.25) < 1e-6
