"""exitbench.datasets"""
