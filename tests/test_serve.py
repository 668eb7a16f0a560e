"""The Serve app over real HTTP: the offline scorer's numbers, the bad-input matrix, auth,
and a bounded concurrent load with every response complete."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from pipelines.serve import ServeConfig, application
from qpeft.config import AdapterConfig, ModelConfig, TemplateConfig, from_dict
from qpeft.lm.backbone import load_backbone
from qpeft.loading.checkpoint import save_adapter
from qpeft.scoring.model import QPeftModel
from qpeft.scoring.scorer import score_pairs
from tests.conftest import TINY_TEMPLATE, moved_off_start
from tests.synthetic import CONTENT, save_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
PORT = 8431
KEY_ENV = "QPEFT_TEST_SERVE_KEY"


def config(model: str, template: dict | None = None, **serve_section) -> ServeConfig:
    return from_dict(
        ServeConfig,
        {
            "model": {"name": model},
            "template": {
                **TINY_TEMPLATE,
                "max_doc_tokens": 12,
                "max_query_tokens": 6,
                **(template or {}),
            },
            "serve": {
                "host": "127.0.0.1",
                "port": PORT,
                "cpus_per_replica": 0.5,
                "token_budget": 200,  # a few tiny pairs per batch: big requests span batches
                "max_documents": 60,
                "max_request_bytes": 20_000,
                **serve_section,
            },
        },
    )


@pytest.fixture(scope="module")
def service(ray_session, tmp_path_factory, monkeypatch_module):
    from ray import serve

    model = save_tiny_model(tmp_path_factory.mktemp("serve") / "tiny")
    monkeypatch_module.setenv(KEY_ENV, "s3cret")
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    try:
        serve.run(application(config(model)), name="open", route_prefix="/")
        strict = config(
            model,
            {"long_queries": "fail"},
            oversize_documents="reject",
            api_key_env=KEY_ENV,
            fusion=0.25,
        )
        serve.run(application(strict), name="strict", route_prefix="/strict")
        yield {"url": f"http://127.0.0.1:{PORT}", "model": model}
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def words(i: int, n: int = 6) -> str:
    return " ".join(CONTENT[(i + j) % len(CONTENT)] for j in range(n))


def offline(model_dir: str, query: str, docs: list[str]) -> list[float]:
    backbone = load_backbone(ModelConfig(name=model_dir))
    model = QPeftModel.build(
        backbone,
        TemplateConfig(**{**TINY_TEMPLATE, "max_doc_tokens": 12, "max_query_tokens": 6}),
        AdapterConfig(method="zero_shot"),
    )
    return score_pairs(model, [query] * len(docs), docs)


def test_scores_equal_the_offline_scorer_across_batches(service):
    docs = [words(i, 4 + i % 5) for i in range(50)]  # 50 pairs over many 200-token batches
    body = {"query": "w1 w2", "documents": docs, "return_documents": True}
    response = httpx.post(f"{service['url']}/v1/rerank", json=body, timeout=120)
    assert response.status_code == 200, response.text
    data = response.json()
    expected = offline(service["model"], "w1 w2", docs)
    results = data["results"]
    assert sorted(r["index"] for r in results) == list(range(50))
    assert all(r["document"]["text"] == docs[r["index"]] for r in results)
    assert max(abs(r["relevance_score"] - expected[r["index"]]) for r in results) < 1e-4
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert data["usage"]["documents"] == 50 and data["usage"]["total_tokens"] > 0
    assert data["model"].endswith("zero-shot")

    top = httpx.post(
        f"{service['url']}/v1/rerank",
        json={"query": "w1 w2", "documents": [{"text": d} for d in docs[:5]], "top_n": 2},
    ).json()["results"]
    assert len(top) == 2 and "document" not in top[0]
    assert [r["index"] for r in top] == [r["index"] for r in results if r["index"] < 5][:2]


def test_long_documents_are_truncated_and_flagged(service):
    body = {"query": "w1", "documents": [words(0, 30), words(1, 3)]}
    data = httpx.post(f"{service['url']}/v1/rerank", json=body).json()
    flags = {r["index"]: r.get("truncated", False) for r in data["results"]}
    assert flags == {0: True, 1: False} and data["usage"]["truncated_documents"] == 1


def test_long_queries_are_cut_and_counted_or_refused(service):
    """The open app keeps a long query's first 6 tokens (template.max_query_tokens) and
    says how many it cut; the strict one (long_queries: fail) refuses it, naming the field."""
    query, docs = words(3, 10), [words(0), words(1)]
    data = httpx.post(f"{service['url']}/v1/rerank", json={"query": query, "documents": docs})
    assert data.status_code == 200 and data.json()["usage"]["query_tokens_cut"] == 4
    scores = {r["index"]: r["relevance_score"] for r in data.json()["results"]}
    expected = offline(service["model"], words(3, 6), docs)
    assert [scores[0], scores[1]] == pytest.approx(expected, abs=1e-5)
    strict = httpx.post(
        f"{service['url']}/strict/v1/rerank",
        json={"query": query, "documents": docs},
        headers={"authorization": "Bearer s3cret"},
    )
    assert strict.status_code == 422
    assert "query: 10 tokens, over template.max_query_tokens=6" in strict.json()["error"]


BAD_INPUT = [
    ({"documents": ["w1"]}, 422, "query: Field required"),
    ({"query": "  ", "documents": ["w1"]}, 422, "query: must not be empty"),
    ({"query": 5, "documents": ["w1"]}, 422, "query: Input should be a valid string"),
    ({"query": "w1", "documents": []}, 422, "documents: must not be empty"),
    ({"query": "w1"}, 422, "documents: Field required"),
    ({"query": "w1", "documents": "w2"}, 422, "documents: Input should be a valid list"),
    ({"query": "w1", "documents": ["w2", 7]}, 422, "documents.1"),
    ({"query": "w1", "documents": [{"txt": "w2"}]}, 422, "documents.0.text: Field required"),
    ({"query": "w1", "documents": ["w2"], "top_n": 0}, 422, "top_n: Input should be greater"),
    ({"query": "w1", "documents": ["w2"] * 61}, 413, "documents: 61 documents, over the limit"),
    ("{not json", 400, "body: malformed JSON"),
    ({"query": "w1", "documents": ["w2 " * 8000]}, 413, "body: request is over the limit"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_INPUT)
def test_bad_input_gets_a_4xx_naming_the_field(service, body, status, message):
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(
        f"{service['url']}/v1/rerank",
        content=content,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_strict_app_rejects_long_documents_and_needs_the_key(service):
    url = f"{service['url']}/strict/v1/rerank"
    body = {"query": "w1", "documents": [words(0, 3), words(1, 30)]}
    assert httpx.post(url, json=body).status_code == 401
    wrong = httpx.post(url, json=body, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "authorization" in wrong.json()["error"]
    auth = {"authorization": "Bearer s3cret"}
    rejected = httpx.post(url, json=body, headers=auth)
    assert rejected.status_code == 422 and "documents[1]: over the" in rejected.json()["error"]
    ok = httpx.post(url, json={**body, "documents": body["documents"][:1]}, headers=auth)
    assert ok.status_code == 200
    assert httpx.get(f"{service['url']}/strict/healthz").json() == {"status": "ok"}


def test_first_stage_scores_are_fused_where_the_service_has_a_weight(service):
    docs = [words(i, 4) for i in range(4)]
    bm25 = [3.0, 9.0, 1.0, 5.0]
    body = {
        "query": "w1 w2",
        "documents": [{"text": d, "first_stage_score": b} for d, b in zip(docs, bm25, strict=True)],
    }
    auth = {"authorization": "Bearer s3cret"}
    response = httpx.post(f"{service['url']}/strict/v1/rerank", json=body, headers=auth)
    assert response.status_code == 200, response.text
    fused = response.json()
    lm = {r["index"]: r["lm_score"] for r in fused["results"]}
    low, high = min(lm.values()), max(lm.values())
    for r in fused["results"]:
        i = r["index"]
        expected = 0.25 * (lm[i] - low) / (high - low) + 0.75 * (bm25[i] - 1.0) / 8.0
        assert r["relevance_score"] == pytest.approx(expected)
    # Without a weight (zero-shot, no serve.fusion) the LM's scores rank, first-stage or not.
    plain = httpx.post(f"{service['url']}/v1/rerank", json=body).json()["results"]
    assert all("lm_score" not in r for r in plain)
    assert {r["index"]: r["relevance_score"] for r in plain} == pytest.approx(lm)
    body["documents"][2] = docs[2]
    mixed = httpx.post(f"{service['url']}/strict/v1/rerank", json=body, headers=auth)
    assert mixed.status_code == 422 and "document 2 has no first_stage_score" in mixed.text


def test_a_lora_adapter_is_served_as_scored_offline(service, tmp_path):
    from ray import serve

    backbone = load_backbone(ModelConfig(name=service["model"]))
    template = {**TINY_TEMPLATE, "max_doc_tokens": 12, "max_query_tokens": 6}
    model = QPeftModel.build(
        backbone, TemplateConfig(**template), AdapterConfig(method="lora", lora_rank=4)
    )
    with torch.no_grad():  # B starts at zero: move it so that LoRA changes the scores
        for p in model.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    adapter = save_adapter(model, tmp_path / "lora")
    docs = [words(i, 5) for i in range(6)]
    serve.run(
        application(config(service["model"], adapter_dir=str(adapter))),
        name="lora",
        route_prefix="/lora",
    )
    try:
        response = httpx.post(
            f"{service['url']}/lora/v1/rerank", json={"query": "w1 w2", "documents": docs}
        )
    finally:
        serve.delete("lora")  # its replica's CPU goes back before the next test
    assert response.status_code == 200, response.text
    got = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
    expected = score_pairs(model, ["w1 w2"] * len(docs), docs)
    assert max(abs(got[i] - expected[i]) for i in range(len(docs))) < 1e-4
    plain = offline(service["model"], "w1 w2", docs)
    assert max(abs(got[i] - plain[i]) for i in range(len(docs))) > 1e-3


def trained_adapter(model_dir: str, method: str, seed: int, **adapter) -> QPeftModel:
    """An adapter on the tiny model with its weights moved off their start (gate open)."""
    torch.manual_seed(seed)
    backbone = load_backbone(ModelConfig(name=model_dir))
    template = {**TINY_TEMPLATE, "max_doc_tokens": 12, "max_query_tokens": 6, "prompt": None}
    model = QPeftModel.build(
        backbone, TemplateConfig(**template), AdapterConfig(method=method, **adapter)
    )
    return moved_off_start(model, seed)


def test_requests_pick_their_adapter_and_share_one_lm(service, tmp_path):
    """Concurrent requests for three adapters and zero-shot, batched together, each get
    their own adapter's offline scores; missing and foreign adapters get a 4xx by name
    while the others keep serving; a new folder is served without a restart."""
    from ray import serve

    root = tmp_path / "adapters"
    adapters = {
        "a": trained_adapter(service["model"], "qpeft_a", 1, heads=2, dropout=0.0),
        "r": trained_adapter(service["model"], "qpeft_r", 2, k=2),
        "soft": trained_adapter(service["model"], "soft_prompt", 3),
    }
    for name, model in adapters.items():
        save_adapter(model, root / name)
    other = save_tiny_model(tmp_path / "other", vocab_extra=["extra"])
    save_adapter(trained_adapter(other, "qpeft_a", 4, dropout=0.0), root / "foreign")
    serve.run(
        application(config(service["model"], adapter_root=str(root), token_budget=400)),
        name="multi",
        route_prefix="/multi",
    )
    url = f"{service['url']}/multi"
    docs = [words(i, 5) for i in range(6)]
    names = ["a", "r", "soft", "zero-shot", None] * 4

    def ask(name: str | None) -> httpx.Response:
        body = {"query": "w1 w2", "documents": docs, **({"model": name} if name else {})}
        return httpx.post(f"{url}/v1/rerank", json=body, timeout=120)

    try:
        with ThreadPoolExecutor(10) as pool:
            responses = list(pool.map(ask, names))
        by_header = httpx.post(
            f"{url}/v1/rerank",
            json={"query": "w1 w2", "documents": docs},
            headers={"serve_multiplexed_model_id": "r"},
            timeout=120,
        )
        clash = httpx.post(
            f"{url}/v1/rerank",
            json={"query": "w1 w2", "documents": docs, "model": "a"},
            headers={"serve_multiplexed_model_id": "r"},
            timeout=120,
        )
        missing = ask("nope")
        foreign = ask("foreign")
        save_adapter(adapters["a"], root / "late")
        late = ask("late")
        listed = httpx.get(f"{url}/v1/models").json()["data"]
    finally:
        serve.delete("multi")  # its replica's CPU goes back before the next test
    plain = offline(service["model"], "w1 w2", docs)
    for name, response in zip(names, responses, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        got = {r["index"]: r["relevance_score"] for r in body["results"]}
        if name in adapters:
            expected = score_pairs(adapters[name], ["w1 w2"] * len(docs), docs)
            assert max(abs(a - b) for a, b in zip(expected, plain, strict=True)) > 1e-3
        else:
            expected = plain
        assert body["model"] == (name or listed[0]["id"])  # omitted: the default
        assert max(abs(got[i] - expected[i]) for i in range(len(docs))) < 1e-4, name
    assert by_header.status_code == 200 and by_header.json()["model"] == "r"
    assert clash.status_code == 400 and "name different adapters" in clash.text
    assert missing.status_code == 404 and "no adapter named 'nope'" in missing.text
    assert foreign.status_code == 422 and "'foreign' cannot be served" in foreign.text
    # Errors name the adapter, never where the server keeps adapters.
    assert str(root) not in missing.text and str(root) not in foreign.text
    assert late.status_code == 200
    by_id = {m["id"]: m for m in listed}
    assert {"a", "r", "soft", "late", "zero-shot"} <= set(by_id)
    assert by_id["a"]["method"] == "qpeft_a" and by_id["a"]["loaded"] is True
    assert by_id["soft"]["bytes_on_disk"] > 0 and "fingerprint" in by_id["r"]


def test_overload_is_answered_with_429_and_admitted_latency_stays_bounded(service):
    """200 clients at once against a replica that holds 8 requests: every answer is a 200
    or a 429 with Retry-After, and the admitted ones are answered in bounded time."""
    from ray import serve

    serve.run(
        application(config(service["model"], max_queued_requests=8, retry_after_s=2)),
        name="small",
        route_prefix="/small",
    )
    url = f"{service['url']}/small/v1/rerank"
    body = {"query": "w1 w2", "documents": [words(i, 5) for i in range(4)]}

    def one(_: int) -> tuple[int, float, str | None]:
        start = time.perf_counter()
        response = httpx.post(url, json=body, timeout=120)
        return (
            response.status_code,
            time.perf_counter() - start,
            response.headers.get("retry-after"),
        )

    try:
        with ThreadPoolExecutor(200) as pool:
            answers = list(pool.map(one, range(200)))
    finally:
        serve.delete("small")
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 429}, sorted(set(statuses))
    assert statuses.count(200) >= 8 and statuses.count(429) > 0
    assert all(retry == "2" for status, _, retry in answers if status == 429)
    admitted = sorted(seconds for status, seconds, _ in answers if status == 200)
    p99 = admitted[min(len(admitted) - 1, round(0.99 * (len(admitted) - 1)))]
    admitted_count, refused = statuses.count(200), statuses.count(429)
    print(f"200 clients: {admitted_count} admitted (p99 {p99:.2f} s), {refused} got a 429")
    assert p99 < 30


def test_health_models_and_openapi(service):
    url = service["url"]
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    models = httpx.get(f"{url}/v1/models").json()["data"]
    assert models[0]["method"] == "zero_shot"
    assert "/v1/rerank" in httpx.get(f"{url}/openapi.json").json()["paths"]
    assert httpx.get(f"{url}/docs").status_code == 200


def test_bounded_concurrent_load_has_no_errors_and_complete_responses(service):
    url = f"{service['url']}/v1/rerank"

    def client(worker: int) -> list[tuple[int, int, list[int]]]:
        out = []
        with httpx.Client(timeout=120) as http:
            for i in range(worker, 200, 16):
                n = 1 + i % 4
                docs = [words(i + j) for j in range(n)]
                bad = i % 25 == 0  # a few bad requests mixed in must not hurt the others
                body = {"query": "" if bad else "w3 w4", "documents": docs}
                response = http.post(url, json=body)
                indices = (
                    sorted(r["index"] for r in response.json()["results"])
                    if response.status_code == 200
                    else []
                )
                out.append((i, response.status_code, indices))
        return out

    with ThreadPoolExecutor(16) as pool:
        responses = [r for part in pool.map(client, range(16)) for r in part]
    assert len(responses) == 200
    for i, status, indices in responses:
        if i % 25 == 0:
            assert status == 422
        else:
            assert status == 200 and indices == list(range(1 + i % 4)), (i, status, indices)
