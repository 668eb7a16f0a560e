"""The folder `qpeft train` writes for one run, and how Tune, the demo and rerank read it."""

from __future__ import annotations

import json

from qpeft import storage
from qpeft.artifacts.folder import OutputFolder
from qpeft.loading.model_card import CONFIG_NAME


class TrainingRun(OutputFolder):
    """`<storage_path>/<name>/`: Ray Train's checkpoints, the best adapter so far in
    `adapter/` (published whole at each new best, its config last), the dev curve, and
    `metrics.json`, written last."""

    step = "train"
    marker = "metrics.json"
    overwrite_key = "run.overwrite"
    ADAPTER = "adapter"
    DEV_CURVE = "dev_curve.png"

    @property
    def adapter_dir(self) -> str:
        return self.path(self.ADAPTER)

    def has_adapter(self) -> bool:
        return storage.exists(storage.join(self.adapter_dir, CONFIG_NAME))

    def best_adapter(self) -> str:
        """The best adapter so far: a run Tune stopped early has one too, once it has
        finished its first dev evaluation."""
        if not self.has_adapter():
            raise FileNotFoundError(f"{self.root}: no adapter (no dev evaluation finished yet)")
        return self.adapter_dir

    def metrics(self) -> dict:
        return json.loads(storage.read_text(self.path(self.marker)))

    def write_metrics(self, summary: dict) -> None:
        """The run's summary; written last, it marks the run finished."""
        storage.write_text(self.path(self.marker), json.dumps(summary, indent=2) + "\n")
