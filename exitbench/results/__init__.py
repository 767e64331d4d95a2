"""exitbench.results"""
