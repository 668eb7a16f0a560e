"""Serve adapters as a reranking service over HTTP: `qpeft serve --config FILE`.

A Ray Serve deployment holds the frozen backbone once, a default adapter (or none:
zero-shot) and, with `serve.adapter_root`, any adapter under that root that a request names
in `model` (`qpeft.loading.adapter_cache`: loaded on first use, an LRU bounded by bytes and count).
It answers `POST /v1/rerank` in the Cohere/Jina shape. Every (query, document) pair of
every request is tokenized by its adapter and checked in the request's own handler, then
queued for `@serve.batch`, which groups pairs across concurrent requests, whatever their
adapters, up to a token budget; the batch runs the frozen LM once for all of them
(`qpeft.scoring.mixed`) in a worker thread, and each request gathers its pairs' scores back in
order. Bad input is answered with a 4xx naming the field before anything is queued, so it
never touches another request's batch.
"""

import asyncio
import hmac
import os
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Literal

from fastapi import FastAPI, Header
from ray import serve

from pipelines.cli import run_as_module, step_config
from pipelines.ray_setup import RaySection, init_ray
from pipelines.rerank_fusion import CHOOSE, check_fusion_value, fusion_weight
from pipelines.serve_api import (
    BodySizeLimit,
    RerankRequest,
    RerankResponse,
    RerankResult,
    ResultDocument,
    ServiceError,
    Usage,
    install_error_handlers,
    request_byte_limit,
    set_request_byte_limit,
)
from qpeft import __version__, storage
from qpeft.config import (
    ConfigError,
    ModelConfig,
    ScoringConfig,
    TemplateConfig,
    from_dict,
    load_config,
    to_dict,
)
from qpeft.lm.template import PairLayout, QueryTooLongError
from qpeft.loading.adapter_cache import ZERO_SHOT, AdapterNotFoundError, AdapterUnusableError
from qpeft.loading.checkpoint import adapter_reference
from qpeft.scoring.fusion import fuse
from qpeft.scoring.model import QPeftModel


@dataclass
class AutoscalingSection:
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 8.0


@dataclass
class ServeSection:
    adapter_dir: str | None = None  # null: zero-shot query likelihood with `template`
    model_name: str | None = None  # reported as `model`; default: adapter folder or backbone
    # Many adapters on one LM: a request's `model` names a folder under this root (local or a
    # cloud URI), a Hub repo id, or `zero-shot`; omitted, the default above. null: `model`
    # is ignored, as Cohere clients send one (docs/serving.md).
    adapter_root: str | None = None
    adapter_cache_mb: float = 1024.0  # adapters kept loaded, by their bytes in memory
    max_adapters: int = 32  # ... and by count
    allow_hub_adapters: bool = False  # let `model` name a Hugging Face Hub repo id too
    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"
    app_name: str = "qpeft"
    token_budget: int = 4096  # tokens per scoring batch across requests
    batch_wait_timeout_s: float = 0.01
    max_ongoing_requests: int = 64  # per replica: enough for batches to fill
    # Requests a replica holds at once (scoring or waiting for a batch); more get a 429 with
    # Retry-After at once, as TEI answers, instead of waiting in a queue without bound.
    max_queued_requests: int = 128
    retry_after_s: int = 1
    max_documents: int = 1000  # per request; more is a 413
    max_request_bytes: int = 2_000_000
    oversize_documents: Literal["truncate", "reject"] = "truncate"
    api_key_env: str | None = "QPEFT_API_KEY"  # if this variable is set, require the bearer
    num_replicas: int = 1
    autoscaling: AutoscalingSection | None = None  # replaces num_replicas when given
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    threads_per_replica: int | None = None  # null: torch's default
    # Interpolation with the first stage for requests whose documents carry a
    # `first_stage_score`: null: the adapter's dev-chosen weight (zero-shot: none); a
    # weight in [0, 1]; or the path of a dev rerank's fusion.json.
    fusion: float | str | None = None

    def validate(self) -> None:
        for key in (
            "token_budget",
            "max_ongoing_requests",
            "max_documents",
            "num_replicas",
            "max_adapters",
            "max_queued_requests",
            "retry_after_s",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"serve.{key}: must be >= 1")
        if self.adapter_cache_mb <= 0:
            raise ConfigError("serve.adapter_cache_mb: must be > 0")
        if self.model_name == ZERO_SHOT and self.adapter_dir:
            raise ConfigError(
                f"serve.model_name: {ZERO_SHOT!r} names the LM without an adapter; choose "
                "another name for serve.adapter_dir"
            )
        if self.fusion == CHOOSE:
            raise ConfigError("serve.fusion: choose it on dev with `qpeft rerank`, then pass it")
        check_fusion_value(self.fusion, "serve.fusion")


@dataclass
class ServeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)  # zero-shot only
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    serve: ServeSection = field(default_factory=ServeSection)
    ray: RaySection = field(default_factory=RaySection)


def total_tokens(layouts: list[PairLayout]) -> int:
    return sum(len(layout.input_ids) for layout in layouts)


def queued_tokens(items: list[tuple[QPeftModel, PairLayout]]) -> int:
    """The batch size `@serve.batch` compares with the token budget."""
    return total_tokens([layout for _, layout in items])


api = FastAPI(
    title="qpeft reranker",
    version=__version__,
    description="Q-PEFT query-likelihood reranking (Cohere/Jina-style /v1/rerank).",
)
install_error_handlers(api)
# Serve freezes a copy of the app when the class below is decorated, so the size limit is
# installed here and reads the value each replica sets from its config.
api.add_middleware(BodySizeLimit, limit=request_byte_limit)


def fused_scores(lm: list[float], first_stage: list[float], weight: float) -> list[float]:
    """One request's documents are one query's candidate list: min-max per system over
    them, then the weighted sum (qpeft/scoring/fusion.py). Defined above `Reranker`: Serve copies
    the class with the globals that exist when it is decorated."""
    keys = [str(i) for i in range(len(lm))]
    fused = fuse(
        {"q": dict(zip(keys, lm, strict=True))},
        {"q": dict(zip(keys, first_stage, strict=True))},
        weight,
    )
    return [fused["q"][k] for k in keys]


@serve.deployment
@serve.ingress(api)
class Reranker:
    def __init__(self, config: dict):
        import torch

        from qpeft.lm.backbone import load_backbone
        from qpeft.loading.adapter_cache import AdapterCache
        from qpeft.scoring.model import describe_prefix_budget

        cfg = from_dict(ServeConfig, config)
        if cfg.serve.threads_per_replica:
            torch.set_num_threads(cfg.serve.threads_per_replica)
        section = cfg.serve
        self.cache = AdapterCache(
            load_backbone(cfg.model),
            cfg.template,
            section.adapter_root,
            int(section.adapter_cache_mb * 2**20),
            section.max_adapters,
            section.allow_hub_adapters,
        )
        self.name = section.model_name or (
            os.path.basename(section.adapter_dir.rstrip("/"))
            if section.adapter_dir
            else f"{cfg.model.name}-zero-shot"
        )
        if self.name != ZERO_SHOT:
            # Alone in its service, a LoRA default goes into the LM itself: no second copy.
            self.cache.pin(self.name, section.adapter_dir, section.adapter_root is not None)
        self.scoring = cfg.scoring
        print(describe_prefix_budget(self.cache.backbone, cfg.scoring.prefix_token_budget))
        self.section = section
        self.admitted = 0  # requests in this replica now (one event loop: no lock needed)
        # A weight given in the config applies to every adapter; null: each adapter's own
        # dev-chosen weight (zero-shot: none). `application` resolved a fusion.json to it.
        self.fusion_override = section.fusion
        key_env = cfg.serve.api_key_env
        self.api_key = (os.environ.get(key_env) or None) if key_env else None
        set_request_byte_limit(cfg.serve.max_request_bytes)
        self.score_layouts.set_max_batch_size(cfg.serve.token_budget)
        self.score_layouts.set_batch_wait_timeout_s(cfg.serve.batch_wait_timeout_s)

    @serve.batch(max_batch_size=4096, batch_wait_timeout_s=0.01, batch_size_fn=queued_tokens)
    async def score_layouts(self, items: list[tuple[QPeftModel, PairLayout]]) -> list[float]:
        """Score pairs queued by any request for any adapter; a thread keeps the event loop
        taking requests (which fill the next batch) while this one computes."""
        return await asyncio.to_thread(self.score_items, items)

    def score_items(self, items: list[tuple[QPeftModel, PairLayout]]) -> list[float]:
        """One frozen-LM pass for the adapters that leave the LM alone (`qpeft.scoring.mixed`), and
        one per LoRA adapter, which carries its own LM."""
        from qpeft.scoring.mixed import score_mixed_layouts
        from qpeft.scoring.scorer import score_layouts

        # One LM pass per group: the shared LM (key None), or a LoRA adapter's own LM.
        groups: dict[int | None, list[int]] = {}
        for row, (model, _) in enumerate(items):
            key = id(model) if model.adapter.changes_lm_weights else None
            groups.setdefault(key, []).append(row)
        batching = (
            self.scoring.batch_size,
            self.scoring.share_prefix,
            self.scoring.prefix_token_budget,
        )
        scores = [0.0] * len(items)
        for key, rows in groups.items():
            layouts = [items[row][1] for row in rows]
            if key is None:
                models = list({id(items[row][0]): items[row][0] for row in rows}.values())
                index = {id(model): i for i, model in enumerate(models)}
                owners = [index[id(items[row][0])] for row in rows]
                values = score_mixed_layouts(models, layouts, owners, *batching)
            else:
                values = score_layouts(items[rows[0]][0], layouts, *batching)
            for row, value in zip(rows, values, strict=True):
                scores[row] = value
        return scores

    def adapter_for(
        self, request: RerankRequest, header: str | None
    ) -> tuple[str, QPeftModel, float | None]:
        """The adapter a request names (its name, model and fusion weight): `model`, or
        Serve's `serve_multiplexed_model_id` header, under `serve.adapter_root`; else the
        service's default. Loading may read storage: called in a worker thread."""
        name = self.name
        if self.section.adapter_root is not None:
            if request.model and header and request.model != header:
                raise ServiceError(
                    400,
                    f"model: {request.model!r} in the body and {header!r} in the "
                    "serve_multiplexed_model_id header name different adapters",
                )
            name = request.model or header or name
        try:
            entry = self.cache.entry(name)
        except AdapterNotFoundError as err:
            raise ServiceError(404, str(err)) from None
        except AdapterUnusableError as err:
            raise ServiceError(422, str(err)) from None
        weight = self.fusion_override if self.fusion_override is not None else entry.fusion_weight
        return name, entry.model, weight

    def check_key(self, authorization: str | None) -> None:
        if self.api_key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token, self.api_key):
            raise ServiceError(401, "authorization: missing or wrong bearer token")

    def encode(self, request: RerankRequest, model: QPeftModel) -> list[PairLayout]:
        texts = request.texts()
        if len(texts) > self.section.max_documents:
            raise ServiceError(
                413,
                f"documents: {len(texts)} documents, over the limit of "
                f"{self.section.max_documents} (serve.max_documents)",
            )
        try:
            layouts = model.encode([request.query] * len(texts), texts)
        except QueryTooLongError as err:
            raise ServiceError(422, f"query: {err}") from None
        if self.section.oversize_documents == "reject":
            over = [i for i, layout in enumerate(layouts) if layout.doc_truncated]
            if over:
                raise ServiceError(
                    422,
                    f"documents[{over[0]}]: over the {layouts[over[0]].doc_tokens}-token limit "
                    f"for documents ({len(over)} documents are; "
                    "serve.oversize_documents=reject)",
                )
        tokens = max(total_tokens([layout]) for layout in layouts)
        if tokens > self.section.token_budget:
            raise ServiceError(
                422,
                f"documents: a pair of {tokens} tokens does not fit serve.token_budget="
                f"{self.section.token_budget}",
            )
        return layouts

    @api.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True)
    async def rerank(
        self, request: RerankRequest, authorization: str | None = Header(default=None)
    ) -> RerankResponse:
        self.check_key(authorization)
        if self.admitted >= self.section.max_queued_requests:
            raise ServiceError(
                429,
                f"overloaded: {self.admitted} requests are queued on this replica "
                f"(serve.max_queued_requests); retry after {self.section.retry_after_s} s",
                {"Retry-After": str(self.section.retry_after_s)},
            )
        self.admitted += 1
        try:
            return await self.answer(request)
        finally:
            self.admitted -= 1

    async def answer(self, request: RerankRequest) -> RerankResponse:
        # A first use loads the adapter: off the event loop, which keeps taking requests.
        header = serve.get_multiplexed_model_id() or None
        name, model, weight = await asyncio.to_thread(self.adapter_for, request, header)
        layouts = self.encode(request, model)
        lm_scores = await asyncio.gather(
            *(self.score_layouts((model, layout)) for layout in layouts)
        )
        first_stage = request.first_stage_scores()
        fused = first_stage is not None and weight is not None
        scores = fused_scores(lm_scores, first_stage, weight) if fused else lm_scores
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        texts = request.texts()
        results = [
            RerankResult(
                index=i,
                relevance_score=scores[i],
                lm_score=lm_scores[i] if fused else None,
                document=ResultDocument(text=texts[i]) if request.return_documents else None,
                truncated=True if layouts[i].doc_truncated else None,
            )
            for i in order[: request.top_n]
        ]
        return RerankResponse(
            id=str(uuid.uuid4()),
            results=results,
            model=name,
            usage=Usage(
                documents=len(texts),
                total_tokens=total_tokens(layouts),
                truncated_documents=sum(layout.doc_truncated for layout in layouts),
                query_tokens_cut=layouts[0].query_tokens_cut if layouts else 0,
            ),
        )

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self, authorization: str | None = Header(default=None)) -> dict:
        self.check_key(authorization)
        return {"object": "list", "data": await asyncio.to_thread(self.listed_models)}

    def listed_models(self) -> list[dict]:
        """The default adapter, and with an adapter root zero-shot and every adapter under
        it (reads storage: called in a worker thread)."""
        names = [self.name]
        if self.section.adapter_root is not None:
            names += [ZERO_SHOT, *self.cache.available()]
        return [{"object": "model", **self.cache.describe(n)} for n in dict.fromkeys(names)]


def application(cfg: ServeConfig):
    """The Serve application a config describes (replicas, resources, batching)."""
    section = cfg.serve
    if section.adapter_dir:
        # Replicas may start in another folder or on another node (where a URI is fetched).
        section = replace(section, adapter_dir=adapter_reference(section.adapter_dir))
    if section.fusion is not None:
        # The weight itself, so replicas need not read a fusion.json from the driver's
        # folder. null stays null: each adapter then brings its own dev-chosen weight.
        section = replace(section, fusion=fusion_weight(section.fusion, None))
    if section.adapter_root and not storage.is_uri(section.adapter_root):
        section = replace(section, adapter_root=storage.absolute(section.adapter_root))
    from qpeft.lm.backbone import pin_model

    # Replicas only read the model cache; the driver fills it once.
    cfg = replace(cfg, model=pin_model(cfg.model), serve=section)
    scaling = (
        {"autoscaling_config": to_dict(section.autoscaling)}
        if section.autoscaling
        else {"num_replicas": section.num_replicas}
    )
    actor_options: dict = {
        "num_cpus": section.cpus_per_replica,
        "num_gpus": section.gpus_per_replica,
    }
    key_env = section.api_key_env
    if key_env and os.environ.get(key_env):
        # The key travels from the environment of whoever starts the service to every
        # replica, on any node; it is never written into a config file.
        actor_options["runtime_env"] = {"env_vars": {key_env: os.environ[key_env]}}
    return Reranker.options(
        # Past `max_queued_requests` the replica answers 429 itself, at once: Serve must hand
        # it more requests than that. Requests over this bound wait in Serve's router only
        # until the replica has refused some (microseconds each); a bound on the router's
        # queue as well would answer 503 in bursts, which clients do not retry as a 429.
        max_ongoing_requests=max(section.max_ongoing_requests, section.max_queued_requests + 1),
        ray_actor_options=actor_options,
        **scaling,
    ).bind(to_dict(cfg))


def app_builder(args: dict):
    """For `serve run` / `serve deploy` / a RayService: `pipelines.serve:app_builder` with
    `args: {config: FILE, set: [key=value, ...]}` (the same overrides as `--set`)."""
    return application(load_config(ServeConfig, args.get("config"), args.get("set", [])))


def start(cfg: ServeConfig) -> str:
    """Start Ray (or join it), Serve's HTTP proxy and the application; returns the URL."""
    init_ray(cfg.ray)
    section = cfg.serve
    serve.start(http_options={"host": section.host, "port": section.port})
    serve.run(application(cfg), name=section.app_name, route_prefix=section.route_prefix)
    return f"http://{section.host}:{section.port}{section.route_prefix.rstrip('/')}"


def main(argv: list[str] | None = None) -> None:
    cfg = step_config(ServeConfig, __doc__.splitlines()[0], argv)
    url = start(cfg)
    print(f"[serve] POST {url}/v1/rerank  (docs: {url}/docs); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()


if __name__ == "__main__":
    sys.exit(run_as_module("pipelines.serve"))
