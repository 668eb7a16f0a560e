"""Queries checked against the template before any work starts.

Drivers (train, rerank, tune) and `prepare` run this on every query they will use, with the
tokenizer alone, so that a data or template problem stops the run in seconds, in the
process the user started, instead of crashing Ray workers (which Ray Train would retry as
if a node had died). The same policy then applies, pair by pair, in `QPeftModel.encode`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from qpeft.adapters import adapter_class
from qpeft.config import AdapterConfig
from qpeft.data.readers import DataError
from qpeft.lm.template import Template

CHUNK = 1024  # queries tokenized per call


@dataclass
class QueryCheck:
    """What the template's query policy does to a set of queries."""

    queries: int = 0
    longest_tokens: int = 0
    over_limit: int = 0  # queries over template.max_query_tokens
    truncated: int = 0  # ... cut to their first max_query_tokens tokens (policy truncate)
    tokens_cut: int = 0
    skipped: list[str] = field(default_factory=list)  # ... left out (policy skip)

    def counts(self) -> dict:
        return {
            "queries": self.queries,
            "longest_query_tokens": self.longest_tokens,
            "queries_over_limit": self.over_limit,
            "queries_truncated": self.truncated,
            "query_tokens_cut": self.tokens_cut,
            "queries_skipped": len(self.skipped),
        }


def check_template(template: Template, adapter: AdapterConfig) -> None:
    """The longest allowed query and its hint slots must leave room for a document."""
    cls = adapter_class(adapter.method)
    template.check_room(cls.slots_for(adapter, template, template.config.max_query_tokens))


def check_queries(
    template: Template, adapter: AdapterConfig, queries: Iterable[tuple[str, str]], where: str
) -> QueryCheck:
    """Apply the query policy to (query_id, text) pairs; raise `DataError` naming the query
    for an empty query, or for a long one under `template.long_queries: fail`."""
    check_template(template, adapter)
    limit, policy = template.config.max_query_tokens, template.config.long_queries
    result = QueryCheck()
    items = list(queries)
    for start in range(0, len(items), CHUNK):
        chunk = items[start : start + CHUNK]
        token_lists = template.tokenize_queries([text for _, text in chunk])
        for (query_id, text), tokens in zip(chunk, token_lists, strict=True):
            result.queries += 1
            if not tokens or not text.strip():
                raise DataError(f"{where}: query {query_id!r} is empty")
            result.longest_tokens = max(result.longest_tokens, len(tokens))
            if len(tokens) <= limit:
                continue
            result.over_limit += 1
            if policy == "truncate":
                result.truncated += 1
                result.tokens_cut += len(tokens) - limit
            elif policy == "skip":
                result.skipped.append(query_id)
            else:
                raise DataError(
                    f"{where}: query {query_id!r} has {len(tokens)} tokens, over "
                    f"template.max_query_tokens={limit} (template.long_queries=fail; "
                    "`truncate` keeps the first tokens, `skip` leaves such queries out)"
                )
    return result
