"""Online execution (issue 17, item 5): the policy inside the model between exits, the compute really stopped.

Checked against independent computations: the incremental pass against forward_all, chunk safety
against each block separated alone, the executed MACs against FlopCounterMode, the online choices
against the replay of the same policy on the recording, the online output against forward_all's
estimates stitched by those choices.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import exitbench
from exitbench.harness.local import LocalExecutor
from exitbench.harness.online import execute, run_online, stitch
from exitbench.harness.runner import execute as record, prepare
from exitbench.harness.spec import RecordSettings, RunSpec
from exitbench.errors import UsageError
from exitbench.models.adapters import count_macs
from exitbench.models.base import LevelStep
from exitbench.models.checkpoint import CheckpointError
from exitbench.models.contract import ContractError, check_model
from exitbench.models.press import PressModel, PressState
from exitbench.models.registry import resolve_model
from exitbench.policies.arrays import BlockArrays
from exitbench.policies.base import PolicyError, parse_policy

ONLINE = ("probabilistic:t=8,p=0.5", "probabilistic:t=4,p=0.6,condition=snr_ref", "static:l=1", "static:l=exit3")


@pytest.fixture(scope="module")
def chunked():
    return resolve_model("press-s", {"chunked": "true"}).model


@pytest.fixture(scope="module")
def whole():
    return resolve_model("press-s").model


@pytest.fixture(scope="module")
def chunked_run(tmp_path_factory):
    """The shipped separator, chunked, on 5 synthetic mixtures (no metrics: only the blocks matter)."""
    root = tmp_path_factory.mktemp("online")
    spec = RunSpec("press-s", "synthetic", (("num_utterances", "5"),), RecordSettings(metrics=()),
                   model_args=(("chunked", "true"),))
    outcome = record(prepare(spec), root, LocalExecutor())
    return root, outcome.run_id


def _mixture(n: int = 9100, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(n, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def speech():
    """A demo-set mixture (real speech): its blocks exit at different levels, unlike noise."""
    from exitbench.datasets.registry import open_testset

    return torch.from_numpy(open_testset("demo", sample_rate=8000).load("000_june_allison").mixture).float()


# -- the model side --------------------------------------------------------------------------------
def test_chunked_blocks_are_separated_on_their_own(chunked):
    x = _mixture()
    out = chunked.forward_all(x)
    t = chunked.block_size
    for b in range(chunked.num_blocks(x.shape[0])):
        part = chunked.forward_all(x[b * t:(b + 1) * t])
        torch.testing.assert_close(part.estimates, out.estimates[..., b * t:(b + 1) * t], rtol=0, atol=1e-5)
        torch.testing.assert_close(part.alpha[..., 0], out.alpha[..., b], rtol=1e-5, atol=0)


def test_chunked_and_whole_pass_differ(chunked, whole):
    """Chunked is a different computation (no context across blocks), so it is its own model identity."""
    x = _mixture()
    assert not torch.allclose(chunked.forward_all(x).estimates, whole.forward_all(x).estimates, atol=1e-3)
    assert resolve_model("press-s", {"chunked": "true"}).identity != resolve_model("press-s").identity


def test_the_contract_refuses_a_model_that_claims_chunk_safety_falsely(whole):
    liar = resolve_model("press-s", check=False).model
    liar.chunk_safe = True  # the whole-utterance pass has a receptive field across blocks
    with pytest.raises(ContractError, match="declares chunk_safe, but block .* depend on other blocks"):
        check_model(liar, "liar")


def test_the_contract_refuses_an_incremental_pass_that_disagrees(monkeypatch):
    model = resolve_model("press-s", check=False).model
    real = PressState.forward_until

    def off(self, level):  # a resume that forgets the variance accumulated so far
        step = real(self, level)
        return LevelStep(alpha=step.alpha * 1.01, beta=step.beta)

    monkeypatch.setattr(PressState, "forward_until", off)
    with pytest.raises(ContractError, match="incremental pass .* differs from forward_all at level 'exit1'"):
        check_model(model, "off")


#: a recalibration with a power per level, beside the shipped checkpoint's own
POWER_CALIBRATION = {"shape": [0.5, 0.8, 1.0, 1.2], "scale": [2.0, 1.5, 1.0, 3.0], "power": [1.0, 0.7, 0.4, 0.2]}


@pytest.mark.parametrize("calibration", ["shipped", "power"])
@pytest.mark.parametrize("mode", ["chunked", "whole"])
def test_the_incremental_pass_without_stops_is_forward_all(mode, calibration, chunked, whole):
    model = chunked if mode == "chunked" else whole
    if calibration == "power":  # a fresh model: the fixtures are shared
        model = resolve_model("press-s", {"chunked": "true"} if mode == "chunked" else None).model
        model.config = dict(model.config, calibration=POWER_CALIBRATION)
    x = _mixture(7777, seed=3)
    out = model.forward_all(x)
    state = model.start(x)
    for level in range(model.num_levels):
        step = state.forward_until(level)
        assert torch.equal(step.alpha, out.alpha[level]) and torch.equal(step.beta, out.beta[level])
        assert torch.equal(state.estimate(), out.estimates[level])
    mean = out.beta / (out.alpha - 1)
    assert bool((mean[1:] <= mean[:-1] * (1 + 1e-6)).all())  # non-increasing over exits (to rounding)


@pytest.mark.parametrize("mode", ["chunked", "whole"])
def test_online_output_is_forward_all_stitched_by_the_choices(mode, chunked, whole, speech):
    model = chunked if mode == "chunked" else whole
    x = speech
    full = model.forward_all(x)
    for spec in ONLINE:
        o = execute(model, x.numpy(), parse_policy(spec))
        assert o.choices.min() >= 0 and o.choices.max() < model.num_levels
        if spec.startswith("probabilistic"):
            assert len(set(o.choices.tolist())) > 1
        want = stitch(full.estimates, o.choices, model.block_size)
        # batched GEMMs round with the batch's size: chunked rows that left the batch differ by ~1e-7
        torch.testing.assert_close(o.output, want, rtol=0, atol=0 if mode == "whole" else 1e-5)


@pytest.mark.parametrize("mode", ["chunked", "whole"])
def test_executed_macs_are_what_flop_counter_mode_counts(mode, chunked, whole, speech):
    model = chunked if mode == "chunked" else whole
    x = speech.numpy()
    pol = parse_policy("probabilistic:t=8,p=0.5")
    box = {}
    counted = count_macs(model.module, lambda: box.setdefault("o", execute(model, x, pol))).total
    o = box["o"]
    assert len(set(o.choices.tolist())) > 1, "the test needs blocks that exit at different levels"
    assert o.macs == pytest.approx(counted, rel=0.01)
    deepest = execute(model, x, parse_policy("static:l=3"))
    if mode == "chunked":  # every block pays for its own exit only
        per = [model.macs_per_sample(c) for c in o.choices] + [0.0]
        assert o.macs < deepest.macs
        assert o.macs >= sum(p * model.block_size for p in per)  # decoders of earlier exits come on top
    else:  # the whole utterance runs to its deepest exit
        assert o.macs >= execute(model, x, parse_policy(f"static:l={o.choices.max()}")).macs


# -- the policy side -------------------------------------------------------------------------------
def _slice(arrays: BlockArrays, level: int) -> BlockArrays:
    """One level of a recording's arrays, as an online step sees it (the utterances' own P_ref kept)."""
    return BlockArrays(utt=arrays.utt, utt_ids=arrays.utt_ids, block=arrays.block, start=arrays.start, n=arrays.n,
                       stats={k: v[:, level:level + 1] for k, v in arrays.stats.items()},
                       macs=arrays.macs[:, level:level + 1], sample_rate=arrays.sample_rate,
                       alpha=arrays.alpha[:, level:level + 1], beta=arrays.beta[:, level:level + 1],
                       p_ref=arrays.p_ref)


@pytest.mark.parametrize("spec", ONLINE)
def test_stops_level_by_level_is_choose(spec, synthetic_run):
    """Brute force over blocks: the first level each block stops at, one level at a time, is choose()'s."""
    arrays = exitbench.open(synthetic_run.root).arrays(synthetic_run.run_id)
    policy = parse_policy(spec)
    names = list(arrays.level_names)
    want = policy(arrays)
    for k in range(arrays.num_blocks):
        first = arrays.num_levels - 1
        for level in range(arrays.num_levels - 1):
            one = _slice(arrays, level)
            if policy.stops(one, level, names)[k]:
                first = level
                break
        assert first == want[k]


@pytest.mark.parametrize("spec", ["oracle:t=10", "oracle-best:t=10", "budget:gmacs=0.5", "uniform",
                                  "probabilistic:t=10,per_source=1"])
def test_policies_that_cannot_run_online_say_why(spec, chunked_run):
    root, run_id = chunked_run
    with pytest.raises(PolicyError, match="cannot run online"):
        run_online(exitbench.open(root), run_id, spec)


# -- end to end ------------------------------------------------------------------------------------
def test_online_choices_equal_the_replay_chunked(chunked_run):
    root, run_id = chunked_run
    res = exitbench.open(root)
    for spec in ONLINE[:3]:
        f = (res.online(run_id, spec) if spec == ONLINE[0] else run_online(res, run_id, spec)).figures()
        assert f["choices_equal"] == f["blocks"] > 0
        # per block, what ran is what the replay charges, plus the decoders of earlier exits
        assert f["mac_saving_executed"] == pytest.approx(f["mac_saving_replay"], abs=0.05)


def test_online_whole_utterance_saves_only_what_the_deepest_block_allows(synthetic_run):
    res = exitbench.open(synthetic_run.root)
    s = run_online(res, synthetic_run.run_id, "probabilistic:t=8,p=0.5")
    f = s.figures()
    assert not s.chunk_safe and f["choices_equal"] == f["blocks"]
    t = s.table.to_pydict()
    for choices, executed, base in zip(t["choices"], t["macs_executed"], t["baseline_macs_executed"]):
        if max(choices) == 3:
            assert executed >= base * 0.999  # nothing saved while one block needs the deepest exit
    assert f["mac_saving_executed"] <= f["mac_saving_replay"] + 1e-9


def test_checkpoint_options_are_checked_and_enter_the_identity():
    with pytest.raises(CheckpointError, match="'width' is not one of its execution options \\(chunked\\)"):
        resolve_model("press-s", {"width": "2"})
    with pytest.raises(CheckpointError, match="chunked=maybe"):
        resolve_model("press-s", {"chunked": "maybe"})
    a, b = resolve_model("press-s", {"chunked": "true"}), resolve_model("press-s", {"chunked": "1"})
    assert a.identity == b.identity and a.model.chunk_safe and isinstance(a.model, PressModel)


def test_cli_online_stores_its_table_and_refuses_offline_policies(chunked_run):
    import pyarrow.parquet as pq

    from exitbench.harness.cli import app

    root, run_id = chunked_run
    runner = CliRunner()
    r = runner.invoke(app, ["online", run_id[:8], "-r", str(root), "-p", "static:l=1", "--limit", "2",
                            "--repeats", "1", "-q"])
    assert r.exit_code == 0, r.output
    assert "2 of 2" not in r.output and "choices equal to the replay's" in r.output
    files = list((root / "online" / f"run={run_id}").glob("policy=*.parquet"))
    assert len(files) == 1
    table = pq.read_table(files[0])
    assert table.num_rows == 2 and table.schema.metadata[b"policy"] == b"static:l=1"
    r = runner.invoke(app, ["online", run_id[:8], "-r", str(root), "-p", "oracle:t=10"])
    assert r.exit_code == 2 and "cannot run online" in r.output and "Traceback" not in r.output


def test_a_batch_of_utterances_in_one_pass_changes_nothing_but_the_batch(chunked, whole):
    from exitbench.datasets.registry import open_testset

    ts = open_testset("demo", sample_rate=8000)
    mixes = [ts.load(u).mixture for u in ts.ids()[:4]]
    pol = parse_policy("probabilistic:t=8,p=0.5")
    together = execute(chunked, mixes, pol)
    for mix, one in zip(mixes, together):
        alone = execute(chunked, mix, pol)
        assert np.array_equal(one.choices, alone.choices)
        torch.testing.assert_close(one.output, alone.output, rtol=0, atol=1e-5)
    assert sum(p.macs for p in together) == pytest.approx(sum(execute(chunked, m, pol).macs for m in mixes))
    with pytest.raises(UsageError, match="not chunk-safe"):
        execute(whole, mixes, pol)


def test_online_in_batches_gives_the_replays_choices(chunked_run):
    root, run_id = chunked_run
    f = run_online(exitbench.open(root), run_id, "probabilistic:t=8,p=0.5", batch=3).figures()
    assert f["choices_equal"] == f["blocks"] and f["utterances"] == 5


def test_a_model_without_an_incremental_pass_says_so():
    from exitbench.models.base import OnlineUnsupported

    slim = resolve_model("slimdemucs-s").model
    with pytest.raises(OnlineUnsupported, match="has no incremental pass"):
        execute(slim, np.zeros(16000, dtype=np.float32), parse_policy("static:l=1"))


def test_online_block_sums_are_a_recordings_bit_for_bit():
    """A decision reads the sums a replay reads: the same float64 values, not merely close ones."""
    from exitbench.harness.online import _Blocks, _level_stats
    from exitbench.metrics.blockstats import block_stats

    rng = np.random.default_rng(1)
    n, t = 29441, 2000
    mix = rng.standard_normal(n).astype(np.float32).astype(np.float64)
    est = rng.standard_normal((2, n)).astype(np.float32)
    ref = block_stats(est[None], np.zeros((2, n)), mix, t)
    nb = -(-n // t)
    mb = np.zeros(nb * t)
    mb[:n] = mix
    idx = np.array([0, 3, 7, 14])
    got = _level_stats(torch.from_numpy(est), idx, {"_mix_blocks": mb.reshape(nb, t)}, _Blocks.of([n], t), t)
    for name in ("e_est", "dot_est_mix", "sum_est"):
        assert np.array_equal(got[name][0][:, idx], ref[name][0][:, idx]), name
