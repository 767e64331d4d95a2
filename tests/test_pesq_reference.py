"""The installed pesq build scores 94 pairs of committed audio exactly as the stored reference does.

A build that changes PESQ's rounding (fused multiply-adds, fast-math; see scripts/build_fast_pesq.sh)
changes the numbers a paper reports; this catches it, and the check it runs is the one the fast-build
script relies on to keep or undo a build.
"""

import json

import numpy as np

from exitbench.metrics import pesq_reference


def test_installed_pesq_reproduces_every_stored_score_bit_for_bit():
    bad, n, _ = pesq_reference.check()
    assert n == 94
    assert bad == []


def test_check_flags_a_score_one_ulp_away(tmp_path):
    stored = json.loads(pesq_reference.REFERENCE.read_text())
    name = "enh16k/june_001/wb"
    stored["scores"][name] = float(np.nextafter(stored["scores"][name], np.inf))
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(stored))
    bad, n, _ = pesq_reference.check(path)
    assert bad == [name] and n == 94
