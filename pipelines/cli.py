"""`qpeft <step> --config FILE [--set key=value ...]`, equal to `python -m pipelines.<step>`."""

from __future__ import annotations

import argparse
import importlib
import sys

from qpeft.config import ConfigError
from qpeft.data.readers import DataError

STEPS = {
    "prepare": "pipelines.prepare",
    "train": "pipelines.train",
    "rerank": "pipelines.rerank",
    "evaluate": "pipelines.evaluate",
    "tune": "pipelines.tune",
    "demo": "pipelines.demo",
}


def step_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments every step takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML run config (defaults apply where omitted)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set adapter.k=5 (repeatable)",
    )
    return parser


def run_step(main, argv: list[str] | None = None) -> int:
    """Call a step's main, turning configuration and input-data errors into one clear line
    and exit code 2 (a traceback helps nobody fix a typo in a YAML or a data file)."""
    try:
        main(argv)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        # Errors raised inside Ray tasks arrive wrapped; the original is their `cause`.
        # Ray appends retry advice on further lines; our messages are one line.
        cause = getattr(err, "cause", None)
        original = cause if isinstance(cause, DataError) else err
        print(f"data error: {str(original).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


def run_as_module(name: str) -> int:
    """`python -m pipelines.<step>`: run the step from its imported module, not `__main__`.

    Ray pickles functions and classes of `__main__` by value, and a worker then resolves
    their postponed annotations in its own `__main__`, where the names do not exist
    (`NameError: TrainSettings` in every Ray Train worker). Imported, they travel by name.
    """
    return run_step(importlib.import_module(name).main)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STEPS:
        known = ", ".join(STEPS)
        print(f"usage: qpeft <{'|'.join(STEPS)}> [--config FILE] [--set KEY=VALUE ...]")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown step {argv[0]!r} (known: {known})", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(STEPS[argv[0]])
    return run_step(module.main, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
