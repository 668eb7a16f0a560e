"""Typed artifacts: each step's output folder owns its layout, completion marker, config
stamp and readers, so steps, Tune and the demo hand folders to each other, not paths."""

from qpeft.artifacts.folder import OutputFolder, digest, without
from qpeft.artifacts.prepared import PreparedData
from qpeft.artifacts.report import Report
from qpeft.artifacts.rerank_run import RerankRun
from qpeft.artifacts.training_run import TrainingRun

__all__ = [
    "OutputFolder",
    "PreparedData",
    "Report",
    "RerankRun",
    "TrainingRun",
    "digest",
    "without",
]
