"""exitbench.policies"""
