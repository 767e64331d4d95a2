"""Check the installed pesq build against stored reference scores (bit for bit), or store them.

    python scripts/pesq_reference.py            # 94 pairs of committed audio; exit 1 on any difference
    python scripts/pesq_reference.py --write    # store this build's scores (done once, default build)

Prints the build's module path and its mean time per call. See exitbench/metrics/pesq_reference.py.
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    """Check (or with --write, store) the reference scores; 0 when every score is identical."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="store this build's scores as the reference")
    args = p.parse_args()
    import pesq

    from exitbench.metrics import pesq_reference

    if args.write:
        print(f"stored {pesq_reference.write()} scores in {pesq_reference.REFERENCE}")
        return 0
    bad, n, per_call = pesq_reference.check()
    print(f"pesq at {pesq.__path__[0]}: {n - len(bad)} of {n} scores identical to the reference, "
          f"{1000 * per_call:.2f} ms per call")
    for name in bad[:10]:
        print(f"  differs: {name}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
