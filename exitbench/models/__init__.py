"""exitbench.models"""
