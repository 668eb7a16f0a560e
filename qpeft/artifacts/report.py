"""The folder `qpeft evaluate` writes."""

from __future__ import annotations

from typing import ClassVar

from qpeft.artifacts.folder import OutputFolder


class Report(OutputFolder):
    """`report.md`, `per_query.tsv`, `report.png` and `report.json`, written last. A report
    is cheap to remake: another configuration replaces it instead of being refused."""

    step = "evaluate"
    marker = "report.json"
    overwrite_key = "evaluate.overwrite"
    MARKDOWN: ClassVar[str] = "report.md"
    PER_QUERY: ClassVar[str] = "per_query.tsv"
    PLOT: ClassVar[str] = "report.png"
