"""``python -m exitbench``: the command line."""

from exitbench.harness.cli import main

main()
