"""On the device: what --batch changes of press-s outputs (check_forward_many), chunked and whole, a few batch sizes."""

import torch
from exitbench.models.registry import resolve_model
from exitbench.models.contract import check_forward_many
from exitbench.harness.devices import full_float32

full_float32("cuda")  # as the executors record on a GPU
for ch in ("true", "false"):
    m = resolve_model("press-s", {"chunked": ch}).model.to("cuda")
    for b in (2, 3, 16):
        try:
            print("chunked", ch, "batch", b, "worst relative difference", check_forward_many(m, b, "press-s"))
        except Exception as e:
            print("chunked", ch, "batch", b, "REFUSED", e)
