"""exitbench.reports: figures, tables and the HTML report, drawn from ``exitbench.results.analysis`` frames."""

from exitbench.reports.build import PaperFigures, build_report, run_figures, write_paper_figures
from exitbench.reports.figures import (FigureError, calibration_figure, distributions_figure, exit_map_figure,
                                       pareto_figure, regret_figure, utilization_figure)
from exitbench.reports.style import figure_style, save_figure

__all__ = ["FigureError", "PaperFigures", "build_report", "calibration_figure", "distributions_figure",
           "exit_map_figure", "figure_style", "pareto_figure", "regret_figure", "run_figures", "save_figure",
           "utilization_figure", "write_paper_figures"]
