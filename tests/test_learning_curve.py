"""scripts/learning_curve.py: one point per finished run of a method, step 0 as the point
at zero training queries, the runs' cost beside each point."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location(
        "learning_curve", ROOT / "scripts/learning_curve.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(
    root: Path,
    name: str,
    method: str,
    size: int | None,
    cap: int | None,
    dev: list,
    resumed_at: list | None = None,
):
    history = [
        {"step": i * 10, "epoch": i, "dev_ndcg10": v, "dev_queries": 72,
         **({"train_pairs_per_s": 4.5, "peak_rss_mib": [1500.0, 1490.0]} if i else {})}
        for i, v in enumerate(dev)
    ]  # fmt: skip
    metrics = {
        "config": {
            "adapter": {"method": method},
            "train": {"max_train_queries": cap, "epochs": len(dev) - 1},
        },
        "history": history,
        "best_dev_ndcg10": max(dev),
        "best_epoch": dev.index(max(dev)),
        "steps": 10 * (len(dev) - 1),
        "wall_seconds": 100.0,
        "resumed_at": resumed_at or [],
        **({"train_queries": size} if size is not None else {}),
    }
    (root / name).mkdir(parents=True)
    (root / name / "metrics.json").write_text(json.dumps(metrics))


def test_curve_from_runs(tmp_path, capsys):
    script = load_script()
    runs = tmp_path / "train"
    write_run(runs, "qpeft_a-all", "qpeft_a", 2380, None, [0.28, 0.31, 0.30])
    write_run(runs, "qpeft_a-500", "qpeft_a", 500, 500, [0.28, 0.30], resumed_at=[5])
    write_run(runs, "qpeft_a-150", "qpeft_a", None, 150, [0.28, 0.29])  # no train_queries
    write_run(runs, "qpeft_r-all", "qpeft_r", 2380, None, [0.28, 0.27])
    (runs / "unfinished").mkdir()
    script.main(["--runs", str(runs), "--out", str(tmp_path / "curve")])
    points = json.loads((tmp_path / "curve" / "curve.json").read_text())
    assert [(p["train_queries"], p["best_dev_ndcg10"]) for p in points] == [
        (0, 0.28),
        (150, 0.29),
        (500, 0.30),
        (2380, 0.31),
    ]
    assert (tmp_path / "curve" / "curve.png").stat().st_size > 0
    table = (tmp_path / "curve" / "curve.md").read_text()
    assert (
        "| qpeft_a | 2380 | 2 | 0.3100 | 1 | 0.2800 / 0.3100 / 0.3000 | 20 | 4.50 | 1500, 1490 "
        "| 100.0 |" in table
    )
    assert "| 100.0 (last part: resumed at step 5) | qpeft_a-500 |" in table
    assert "| 2380 |" in capsys.readouterr().out


def test_methods_compared_at_one_training_set_size(tmp_path, capsys):
    """`--methods-at 150`: every method's run capped at 150 queries, best first, step 0
    first; runs on other sizes stay out."""
    script = load_script()
    runs = tmp_path / "train"
    write_run(runs, "qpeft_a-150", "qpeft_a", 150, 150, [0.28, 0.30])
    write_run(runs, "qpeft_r-150", "qpeft_r", 150, 150, [0.28, 0.32])
    write_run(runs, "lora-150", "lora", 150, 150, [0.28, 0.25])
    write_run(runs, "qpeft_a-all", "qpeft_a", 2380, None, [0.28, 0.33])
    out = tmp_path / "curve"
    script.main(["--runs", str(runs), "--out", str(out), "--methods-at", "150"])
    rows = json.loads((out / "methods.json").read_text())
    assert [(r["method"], r["best_dev_ndcg10"]) for r in rows] == [
        ("zero_shot", 0.28),
        ("qpeft_r", 0.32),
        ("qpeft_a", 0.30),
        ("lora", 0.28),
    ]
    assert "by method on 150 training queries" in (out / "methods.md").read_text()
