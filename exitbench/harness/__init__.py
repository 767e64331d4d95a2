"""exitbench.harness"""
