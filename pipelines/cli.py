"""`qpeft <step> --config FILE [--set key=value ...]`, equal to `python -m pipelines.<step>`."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

import yaml

from qpeft.config import ConfigError, load_config, to_dict
from qpeft.data.readers import DataError

# The one registry of steps: `qpeft <step>` runs `pipelines.<step>`'s `main`, which is also
# what `python -m pipelines.<step>` runs (a test checks that both agree with the docs).
STEPS = ("prepare", "train", "rerank", "evaluate", "tune", "serve", "demo")


def step_module(step: str) -> str:
    return f"pipelines.{step}"


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
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (file, defaults and --set) as YAML and exit",
    )
    return parser


def step_config(config_class: type, description: str, argv: list[str] | None) -> Any:
    """Parse a step's arguments and load its validated config. With `--print-config` the
    config is printed and the step exits without running: a dry run of a command line."""
    args = step_arguments(description).parse_args(argv)
    cfg = load_config(config_class, args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        raise SystemExit(0)
    return cfg


def first_line(err: Exception, kind: type) -> str:
    """Errors raised inside Ray tasks arrive wrapped; the original is their `cause`. Ray
    appends a traceback and retry advice on further lines; our messages are one line."""
    cause = getattr(err, "cause", None)
    return str(cause if isinstance(cause, kind) else err).splitlines()[0]


def run_step(main, argv: list[str] | None = None) -> int:
    """Call a step's main, turning configuration and input-data errors into one clear line
    and exit code 2 (a traceback helps nobody fix a typo in a YAML or a data file)."""
    try:
        main(argv)
    except ConfigError as err:
        print(f"config error: {first_line(err, ConfigError)}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"data error: {first_line(err, DataError)}", file=sys.stderr)
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
    module = importlib.import_module(step_module(argv[0]))
    return run_step(module.main, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
