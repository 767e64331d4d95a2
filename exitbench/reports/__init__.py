"""exitbench.reports"""
