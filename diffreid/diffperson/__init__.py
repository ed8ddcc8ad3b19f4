"""Diff-Person: the generated dataset in Market layout, its manifest, checks, stats and report."""
from diffreid.diffperson.fidelity import FidelityConfig, format_fidelity, measure_fidelity, read_fidelity
from diffreid.diffperson.manifest import VerifyReport, read_identities, read_manifest, verify
from diffreid.diffperson.report import write_report
from diffreid.diffperson.stats import (
    format_stats, identity_distribution, identity_distribution_plot, identity_grids, sample_grid,
    score_histograms, stats, write_plots,
)
from diffreid.diffperson.writer import DiffPersonWriter, PidMapper, WriterConfig, market_name

__all__ = [
    "DiffPersonWriter", "FidelityConfig", "PidMapper", "VerifyReport", "WriterConfig", "format_fidelity", "format_stats", "identity_distribution",
    "identity_distribution_plot", "identity_grids", "market_name", "measure_fidelity", "read_fidelity", "read_identities", "read_manifest", "sample_grid",
    "score_histograms", "stats", "verify", "write_plots", "write_report",
]
