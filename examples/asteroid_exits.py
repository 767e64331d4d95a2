"""Early exits on two of Asteroid's separators, as a user would add them (examples of the adapter toolkit).

Asteroid (https://github.com/asteroid-team/asteroid, MIT) is installed from its PyPI package:
``pip install --no-deps asteroid==0.7.0`` (its metadata pins torchaudio and torchmetrics<=0.11.4,
which clash with exitbench's torch and torchmetrics; the model code imports neither) plus
``asteroid-filterbanks huggingface_hub requests`` (exitbench's ``[asteroid]`` extra).

- ``conv_tasnet``: Conv-TasNet with an exit after each repeat of its TCN: the accumulated skip
  connections so far go through Asteroid's own mask net and decoder (the exit head).
- ``dprnn_tasnet``: DPRNN-TasNet with an exit after each dual-path block: the block's output goes
  through the rest of Asteroid's masker (output projection, overlap-add, gate, mask) and decoder.

Record either like any model::

    PYTHONPATH=examples exitbench run -m asteroid_exits:conv_tasnet --model-arg n_repeats=3 ...

Weights are random unless ``weights`` names a state dict (``torch.save(model.state_dict(), path)``
of the same configuration); they enter the run id either way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from exitbench.models.adapters import MultiExitAdapter
from exitbench.models.base import ExitModel


def _load(model: torch.nn.Module, weights: str) -> None:
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))


def conv_tasnet(n_repeats: int = 3, n_blocks: int = 4, n_filters: int = 64, bn_chan: int = 32,
                hid_chan: int = 64, skip_chan: int = 32, sample_rate: int = 8000, block_size: int = 2000,
                weights: str = "", seed: int = 0) -> ExitModel:
    """Asteroid's ConvTasNet, one exit per TCN repeat (exit r: repeats 0..r, mask net, decoder)."""
    from asteroid.models import ConvTasNet
    from asteroid.utils.torch_utils import pad_x_to_y

    torch.manual_seed(seed)  # Asteroid draws its initial weights at construction: the same seed, the same model
    net = ConvTasNet(n_src=2, n_repeats=n_repeats, n_blocks=n_blocks, n_filters=n_filters, bn_chan=bn_chan,
                     hid_chan=hid_chan, skip_chan=skip_chan, sample_rate=sample_rate).eval()
    _load(net, weights)
    masker = net.masker

    def upto(level: int, mixture: torch.Tensor) -> torch.Tensor:
        w = net.forward_encoder(mixture[:, None])  # [1, F, frames]
        batch, _, frames = w.shape
        output = masker.bottleneck(w)
        skips: Any = 0.0
        for layer in masker.TCN[: (level + 1) * n_blocks]:  # Asteroid's TDConvNet loop, cut at the exit
            residual, skip = layer(output)
            skips = skips + skip
            output = output + residual
        score = masker.mask_net(skips).view(batch, masker.n_src, masker.out_chan, frames)
        est = net.forward_decoder(net.apply_masks(w, masker.output_act(score)))
        return pad_x_to_y(est, mixture)

    return MultiExitAdapter(net, upto=upto, levels=[f"repeat{r + 1}" for r in range(n_repeats)],
                            sample_rate=sample_rate, num_sources=2, block_size=block_size)


def dprnn_tasnet(n_repeats: int = 3, n_filters: int = 64, bn_chan: int = 32, hid_size: int = 32,
                 chunk_size: int = 50, sample_rate: int = 8000, block_size: int = 2000, weights: str = "",
                 seed: int = 0) -> ExitModel:
    """Asteroid's DPRNNTasNet, one exit per dual-path block (taps on ``masker.net.<i>``)."""
    from asteroid.models import DPRNNTasNet
    from asteroid.utils.torch_utils import pad_x_to_y

    torch.manual_seed(seed)
    net = DPRNNTasNet(n_src=2, n_repeats=n_repeats, n_filters=n_filters, bn_chan=bn_chan, hid_size=hid_size,
                      chunk_size=chunk_size, sample_rate=sample_rate).eval()
    _load(net, weights)
    m = net.masker
    encoded: dict[str, torch.Tensor] = {}
    net.encoder.register_forward_hook(lambda mod, inputs, out: encoded.__setitem__("w", out))

    def head(level: int, feats: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
        # the lines of Asteroid's DPRNN.forward after `output = self.net(output)`, on block `level`'s output
        w = encoded["w"]  # the encoder ran in this pass before the tap
        batch, _, frames = w.shape
        n_chunks = feats.shape[-1]
        out = m.first_out(feats).reshape(batch * m.n_src, m.bn_chan, m.chunk_size, n_chunks)
        out = F.fold(out.reshape(batch * m.n_src, m.bn_chan * m.chunk_size, n_chunks), (frames, 1),
                     kernel_size=(m.chunk_size, 1), padding=(m.chunk_size, 0), stride=(m.hop_size, 1))
        out = out.reshape(batch * m.n_src, m.bn_chan, -1)
        out = m.net_out(out) * m.net_gate(out)
        mask = m.output_act(m.mask_net(out)).view(batch, m.n_src, m.out_chan, frames)
        return pad_x_to_y(net.forward_decoder(net.apply_masks(w, mask)), mixture)

    return MultiExitAdapter(net, taps=[f"masker.net.{i}" for i in range(n_repeats)], head=head,
                            levels=[f"block{i + 1}" for i in range(n_repeats)], sample_rate=sample_rate,
                            num_sources=2, block_size=block_size)
