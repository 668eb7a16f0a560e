"""Search spaces written in YAML, turned into Ray Tune domains (Tune has no YAML loader).

    search_space:
      train.lr: {type: loguniform, lower: 1.0e-3, upper: 1.0e-1}
      adapter.k: {type: choice, values: [5, 10, 15, 20]}
      train.max_negatives: {type: grid, values: [1, 2]}

Keys are dotted keys of a `qpeft train` config. Every error names the key and the reason.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from qpeft.config import ConfigError

# type -> (required fields, optional fields)
DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "uniform": (("lower", "upper"), ()),
    "quniform": (("lower", "upper", "q"), ()),
    "loguniform": (("lower", "upper"), ()),
    "qloguniform": (("lower", "upper", "q"), ()),
    "randint": (("lower", "upper"), ()),
    "choice": (("values",), ()),
    "grid": (("values",), ()),
}


def _number(spec: dict, field: str, where: str) -> float:
    value = spec[field]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}.{field}: expected a number, got {value!r}")
    try:
        return float(value)  # PyYAML reads 1e-3 as a string
    except ValueError:
        raise ConfigError(f"{where}.{field}: expected a number, got {value!r}") from None


def check_distribution(key: str, spec: Any, where: str = "tune.search_space") -> None:
    """Raise ConfigError naming `where.key` if `spec` is not a valid distribution."""
    where = f"{where}.{key}"
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: expected a mapping with a 'type' ({', '.join(DISTRIBUTIONS)})")
    kind = spec["type"]
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}.type: {kind!r} is not one of {list(DISTRIBUTIONS)}")
    required, optional = DISTRIBUTIONS[kind]
    missing = [f for f in required if f not in spec]
    if missing:
        raise ConfigError(f"{where}: {kind} needs {', '.join(missing)}")
    unknown = sorted(set(spec) - {"type", *required, *optional})
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown field for {kind}")
    if kind in ("choice", "grid"):
        if not isinstance(spec["values"], list) or not spec["values"]:
            raise ConfigError(f"{where}.values: expected a non-empty list")
        return
    lower, upper = _number(spec, "lower", where), _number(spec, "upper", where)
    if not lower < upper:
        raise ConfigError(f"{where}: lower ({lower:g}) must be below upper ({upper:g})")
    if kind.endswith("loguniform") and lower <= 0:
        raise ConfigError(f"{where}.lower: {kind} needs lower > 0")
    if kind == "randint" and not (float(lower).is_integer() and float(upper).is_integer()):
        raise ConfigError(f"{where}: randint needs integer bounds")
    if "q" in spec and _number(spec, "q", where) <= 0:
        raise ConfigError(f"{where}.q: must be positive")


def example_value(spec: dict) -> Any:
    """A value the distribution can produce, to check the key against the train config."""
    if spec["type"] in ("choice", "grid"):
        return spec["values"][0]
    if spec["type"] == "randint":
        return int(float(spec["lower"]))
    return float(spec["lower"])


def to_domain(spec: dict):
    """The Ray Tune domain (or grid search) for a checked distribution."""
    kind = spec["type"]
    if kind == "choice":
        return tune.choice(spec["values"])
    if kind == "grid":
        return tune.grid_search(spec["values"])
    lower, upper = float(spec["lower"]), float(spec["upper"])
    if kind == "uniform":
        return tune.uniform(lower, upper)
    if kind == "quniform":
        return tune.quniform(lower, upper, float(spec["q"]))
    if kind == "loguniform":
        return tune.loguniform(lower, upper)
    if kind == "qloguniform":
        return tune.qloguniform(lower, upper, float(spec["q"]))
    return tune.randint(int(lower), int(upper))  # upper exclusive, as in Tune
