"""press-s inference on the CPU: the in-place channel norm and residual against the forms before them.

Without autograd, ``layers.ChannelNorm`` writes its normalised output into the buffer of its squares and
``press.TCNBlock`` adds the residual into its product's buffer (the same kernels, the same bits: tested in
tests/test_models.py). The baseline is the previous code of those two methods, patched in, in the same run:

    python benchmarks/bench_cpu_forward.py --seconds 5 --repeat 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from exitbench.datasets.synthetic import SyntheticMixtures
from exitbench.models import layers, press
from exitbench.models.registry import resolve_model


def _norm_before(self, x: torch.Tensor) -> torch.Tensor:
    """ChannelNorm.forward's CPU form before the change (a fresh buffer per op)."""
    avg = x.new_full((1, x.shape[1]), 1.0 / x.shape[1])
    mean = torch.matmul(avg, x)
    centred = x - mean
    var = torch.matmul(avg, centred * centred)
    y = centred * torch.rsqrt(var + self.norm.eps)
    return torch.addcmul(self.norm.bias[:, None], y, self.norm.weight[:, None])


def _block_before(self, x: torch.Tensor) -> torch.Tensor:
    """TCNBlock.forward before the change (the residual in a new buffer)."""
    up, act1, norm1, depthwise, act2, norm2, down = self.net
    h = norm1(act1(layers.pointwise_conv1d(x, up)))
    h = norm2(act2(layers.depthwise_conv1d(h, depthwise)))
    return x + layers.pointwise_conv1d(h, down)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)
    mix = torch.from_numpy(SyntheticMixtures(num_utterances=2, seconds=args.seconds).load("syn00001").mixture)
    now = (layers.ChannelNorm.forward, press.TCNBlock.forward)
    print(f"| press-s forward_all, {mix.shape[0] / 8000:.2f} s, 1 thread, median of {args.repeat} | before (ms) |"
          f" now (ms) | before / now |")
    print("| --- | --- | --- | --- |")
    for label, model_args in (("whole", {}), ("chunked=true", {"chunked": "true"})):
        model = resolve_model("press-s", model_args).model
        times: dict[str, list[float]] = {"before": [], "now": []}
        outs = {}
        for _ in range(args.repeat + 1):  # the first round warms up, not counted
            for side in ("before", "now"):
                norm, block = (_norm_before, _block_before) if side == "before" else now
                layers.ChannelNorm.forward, press.TCNBlock.forward = norm, block
                t0 = time.perf_counter()
                with torch.inference_mode():
                    outs[side] = model.forward_all(mix)
                times[side].append(time.perf_counter() - t0)
        layers.ChannelNorm.forward, press.TCNBlock.forward = now
        assert torch.equal(outs["before"].estimates, outs["now"].estimates), "the forms must give the same bits"
        b, n = (statistics.median(times[k][1:]) for k in ("before", "now"))
        print(f"| {label} | {1000 * b:.1f} | {1000 * n:.1f} | {b / n:.2f} |")


if __name__ == "__main__":
    main()
