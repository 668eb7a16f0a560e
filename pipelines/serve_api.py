"""The HTTP contract of the reranking service, in the Cohere/Jina shape, without Ray.

Request `{query, documents[], top_n?, return_documents?}` (documents as strings or `{text,
first_stage_score?}` objects); response `{id, results: [{index, relevance_score, lm_score?,
document?, truncated?}], model, usage}`. Errors are `{"error": message}` with a 4xx status;
the message names the field.
"""

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator


class DocumentObject(BaseModel):
    text: str
    # The first stage's score (e.g. BM25): with one for every document, a service with a
    # fusion weight ranks by the interpolation of both (`lm_score` keeps the LM's own).
    first_stage_score: float | None = None


class RerankRequest(BaseModel):
    """Unknown fields (e.g. Cohere's `max_chunks_per_doc`) are accepted and ignored, so
    existing clients drop in. `model` names an adapter where the service has an adapter root,
    and is ignored where it has not (Cohere clients always send one)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        default=None,
        description="the adapter: a folder under serve.adapter_root, a Hub repo id, or "
        "zero-shot; omitted, the service's default",
    )
    query: str = Field(description="the search query")
    documents: list[str | DocumentObject] = Field(
        description="candidate documents, as strings or {text} objects"
    )
    top_n: int | None = Field(default=None, ge=1, description="return the n best (default all)")
    return_documents: bool = Field(default=False, description="echo each document's text")

    @field_validator("query")
    @classmethod
    def query_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("documents")
    @classmethod
    def documents_not_empty(cls, value: list) -> list:
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("documents")
    @classmethod
    def first_stage_scores_for_all_or_none(cls, value: list) -> list:
        given = [not isinstance(d, str) and d.first_stage_score is not None for d in value]
        if any(given) and not all(given):
            missing = given.index(False)
            raise ValueError(
                f"document {missing} has no first_stage_score; give one for every document "
                "or for none"
            )
        return value

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]

    def first_stage_scores(self) -> list[float] | None:
        if not self.documents or isinstance(self.documents[0], str):
            return None
        scores = [d.first_stage_score for d in self.documents]
        return None if scores[0] is None else scores


class ResultDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float = Field(
        description="mean log-likelihood of the query (higher wins), or the fused score when "
        "the documents carry first-stage scores and the service has a fusion weight"
    )
    lm_score: float | None = Field(default=None, description="the LM's own score, when fused")
    document: ResultDocument | None = None
    truncated: bool | None = Field(default=None, description="the document was cut to fit")


class Usage(BaseModel):
    documents: int
    total_tokens: int
    truncated_documents: int
    # Tokens cut from the end of the query (template.long_queries=truncate).
    query_tokens_cut: int = 0


class RerankResponse(BaseModel):
    id: str
    results: list[RerankResult]
    model: str
    usage: Usage


class ServiceError(Exception):
    """Bad input found after parsing (too many documents, too many tokens...)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers  # e.g. Retry-After with a 429


def error_response(status: int, message: str, headers: dict[str, str] | None = None):
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def validation_message(errors: list[dict]) -> tuple[int, str]:
    """(status, message) for pydantic's errors: 400 for malformed JSON, else 422, each
    error as `field.path: what is wrong`."""
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid")
        return 400, f"body: malformed JSON ({detail.get('ctx', {}).get('error', 'invalid')})"
    parts = []
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        # A union's branch names (str, DocumentObject) say nothing to a client.
        loc = [x for x in loc if x not in ("str", "DocumentObject")]
        field = ".".join(loc) or "body"
        message = e.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return 422, "; ".join(dict.fromkeys(parts))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(*validation_message(exc.errors()))

    @app.exception_handler(ServiceError)
    async def on_service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)


# The limit of this process's replica. Serve pickles the deployment class by value (its
# globals are copied), so it is kept here, in a module both sides import by reference.
_REQUEST_LIMIT = {"bytes": 2_000_000}


def request_byte_limit() -> int:
    return _REQUEST_LIMIT["bytes"]


def set_request_byte_limit(limit: int) -> None:
    _REQUEST_LIMIT["bytes"] = limit


class BodySizeLimit:
    """ASGI middleware: refuse request bodies over `limit()` bytes with 413, whether the
    client announces the length or streams the body. The limit is a function, read per
    request, because the app is built before a replica reads its config."""

    def __init__(self, app, limit: Callable[[], int]):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit()
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_large = error_response(
            413, f"body: request is over the limit of {limit} bytes (serve.max_request_bytes)"
        )
        if length is not None and length.isdigit() and int(length) > limit:
            return await too_large(scope, receive, send)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted_receive, send)
        except _TooLarge:
            await too_large(scope, receive, send)


class _TooLarge(Exception):
    pass
