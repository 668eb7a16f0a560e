"""Deterministic train/dev/test assignment of queries.

A query's split depends only on the seed and its id (a hash), not on file order, sharding
or which other queries exist, so re-running or adding queries never moves a query.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "dev", "test")


def split_of(query_id: str, seed: int, fractions: dict[str, float]) -> str:
    """'train', 'dev' or 'test' for `query_id`, with the given fractions (summing to 1)."""
    digest = hashlib.sha256(f"{seed}:{query_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name in SPLITS:
        edge += fractions.get(name, 0.0)
        if point < edge:
            return name
    return SPLITS[-1]


def nested_subset(query_ids: list[str], size: int, seed: int) -> list[str]:
    """The first `size` of `query_ids` in a fixed order (hash of seed and id): a smaller
    subset is always inside a larger one, so the points of a learning curve add queries
    to those before them instead of drawing new ones."""
    order = sorted(query_ids, key=lambda q: hashlib.sha256(f"{seed}:{q}".encode()).digest())
    return sorted(order[:size])
