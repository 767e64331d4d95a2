#!/usr/bin/env python3
"""Re-save a trained checkpoint for shipping, its weights stored at a lower precision.

    python scripts/ship_checkpoint.py trained/press-m.pt exitbench/models/checkpoints/press-m.pt --storage float16

Config and metadata are kept (the metadata gains ``storage_dtype``); the model loads the stored weights
into float32 modules, so it computes with the rounded weights: measure the shipped file, not the trained one.
"""

from __future__ import annotations

import argparse

import torch

from exitbench.models.checkpoint import load_checkpoint, save_checkpoint


def main() -> None:
    """Parse arguments and write the shipped copy."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--storage", choices=["float16", "bfloat16", "float32"], default="float16")
    args = p.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    sha = save_checkpoint(args.out, ckpt.architecture, ckpt.config, ckpt.state_dict, ckpt.metadata,
                          storage_dtype=getattr(torch, args.storage))
    print(f"wrote {args.out} ({args.storage}, sha256 {sha[:12]})")


if __name__ == "__main__":
    main()
