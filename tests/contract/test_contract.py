"""The simulator answers as Elastic Path's published API descriptions say the real API does.

The JSON Schema beside this file is the project's own reading of those descriptions (each
definition names its source). Every answer here is a real HTTP answer from a running simulator.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from monitor.simulator import Simulator, populate_demo

SCHEMA_PATH = Path(__file__).parent / "elastic-path.schema.json"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
# the repository's copy of ../shared/fixtures: Elastic Path's documented example answers
FIXTURES = Path(__file__).parents[1] / "fixtures"
REGISTRY: Registry[Any] = Registry().with_resource(SCHEMA["$id"], Resource.from_contents(SCHEMA))
START = 1_733_270_626.0  # 2024-12-04T00:03:46Z
CREDENTIALS = {
    "grant_type": "client_credentials",
    "client_id": "demo-client-id",
    "client_secret": "demo-client-secret",
}


def violations(definition: str, answer: Any) -> list[str]:
    """Every way `answer` breaks the schema's `definition`, as readable lines."""
    validator = Draft202012Validator(
        {"$ref": f"{SCHEMA['$id']}#/$defs/{definition}"}, registry=REGISTRY
    )
    return [
        f"{definition} at /{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(answer)
    ]


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class Store:
    """A running simulator and a plain aiohttp session on it, as the monitor talks to it."""

    def __init__(self, sim: Simulator, http: aiohttp.ClientSession) -> None:
        self.sim = sim
        self.http = http
        self.headers: dict[str, str] = {}

    async def token(self, form: Mapping[str, str] = CREDENTIALS) -> tuple[int, Any]:
        async with self.http.post(f"{self.sim.base_url}/oauth/access_token", data=form) as resp:
            return resp.status, await resp.json()

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> tuple[int, Any]:
        url = f"{self.sim.base_url}{path}"
        async with self.http.get(url, params=params, headers=self.headers) as resp:
            return resp.status, await resp.json()

    async def authorise(self) -> None:
        status, body = await self.token()
        assert status == 200
        answer = body.get("data", body)
        self.headers = {"Authorization": f"Bearer {answer['access_token']}"}


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    sim = Simulator(clock=Clock(), seed=3)
    await sim.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Store(sim, http)
    finally:
        await sim.stop()


def populate(sim: Simulator) -> None:
    """The demo store, a job of every status and type on both kinds, and a lived lifecycle."""
    populate_demo(sim, 6, 6)
    # jobs the lifecycle spawns, runs, fails and completes, on every promotion
    sim.spawn_rate = 1.0
    sim.failure_rate = 0.3
    for _ in range(12):
        sim.step()
    for kind in ("promotion", "rule_promotion"):
        for enabled in (True, False):
            pid = sim.add_promotion(kind, enabled=enabled)
            for job_type in ("code_generate", "code_export"):
                for status in ("pending", "processing", "completed", "cancelling", "cancelled"):
                    sim.add_job(pid, job_type=job_type, status=status, number_of_codes=1000)
                sim.add_job(pid, job_type=job_type, status="failed", error="codes limit exceeded")


async def every_page(store: Store, path: str, **params: str) -> list[Any]:
    """Every page of a list, stepping the offset by the records received."""
    pages: list[Any] = []
    offset = 0
    while True:
        status, body = await store.get(path, {**params, "page[offset]": str(offset)})
        assert status == 200, (path, body)
        pages.append(body)
        offset += len(body["data"])
        if not body["data"] or offset >= body["meta"]["results"]["total"]:
            return pages


def job_page_kind(promotion: Mapping[str, Any]) -> tuple[str, str]:
    if promotion["type"] == "rule_promotion":
        return f"/v2/rule-promotions/{promotion['id']}/jobs", "ruleJobPage"
    return f"/v2/promotions/{promotion['id']}/jobs", "standardJobPage"


# the schema itself


def test_the_schema_is_a_valid_json_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert all("$comment" in definition for definition in SCHEMA["$defs"].values())


@pytest.mark.parametrize(
    ("name", "key", "definition"),
    [
        ("promotion-jobs-failed.json", None, "standardJobPage"),
        ("rule-promotion-job-created.json", None, "ruleJobCreated"),
        ("access-token.json", None, "token"),
        ("errors.json", "too_many_jobs_400", "error"),
        ("errors.json", "unauthorized_401", "error"),
        ("errors.json", "internal_500", "error"),
    ],
)
def test_documented_examples_match_the_schema(name: str, key: str | None, definition: str) -> None:
    example = fixture(name)
    assert violations(definition, example if key is None else example[key]) == []


def _rule_job_page() -> dict[str, Any]:
    page = fixture("promotion-jobs-failed.json")
    job = page["data"][0]
    job["rule_promotion_id"] = job.pop("promotion_id")
    job["parameters"]["consume_unit"] = "per_checkout"
    return dict(page)


@pytest.mark.parametrize(
    ("definition", "base", "path", "value", "why"),
    [
        (
            "ruleJobPage",
            _rule_job_page,
            ("data", 0, "parameters", "consume_unit"),
            "per_cart",
            "a Builder job counts per_application/per_checkout",
        ),
        (
            "ruleJobPage",
            _rule_job_page,
            ("data", 0, "parameters", "number_of_codes"),
            5000,
            "Builder caps number_of_codes at 1000",
        ),
        (
            "standardJobPage",
            lambda: fixture("promotion-jobs-failed.json"),
            ("data", 0, "status"),
            "complete",
            "`complete` is a filter spelling, not a status",
        ),
        (
            "standardJobPage",
            lambda: fixture("promotion-jobs-failed.json"),
            ("data", 0, "result"),
            {"deleted": 3},
            "a result always says how many were generated",
        ),
        (
            "standardJobPage",
            lambda: fixture("promotion-jobs-failed.json"),
            ("data", 0, "job_type"),
            "code_export",
            "parameters only on code_generate",
        ),
        (
            "standardJobPage",
            lambda: fixture("promotion-jobs-failed.json"),
            ("meta", "results"),
            {},
            "results.total is always there",
        ),
        (
            "tokenError",
            lambda: {"errors": [{"status": "401", "title": "Unauthorized"}]},
            ("errors", 0, "status"),
            401,
            "the authentication descriptions say status is a string",
        ),
    ],
)
def test_the_schema_rejects_what_the_descriptions_rule_out(
    definition: str, base: Any, path: tuple[Any, ...], value: Any, why: str
) -> None:
    answer = copy.deepcopy(base())
    assert violations(definition, answer) == [], "the unchanged answer must pass"
    target = answer
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    assert violations(definition, answer), why


@pytest.mark.parametrize("missing", ["description", "schema"])
def test_the_schema_requires_what_promotions_standard_requires(missing: str) -> None:
    promotion = {
        "type": "promotion",
        "id": "ad386702-e780-42c6-b190-0527ad768917",
        "name": "Summer",
        "description": "Summer sale",
        "automatic": False,
        "enabled": True,
        "promotion_type": "fixed_discount",
        "schema": {"currencies": [{"amount": 1000, "currency": "USD"}]},
        "start": "2020-01-01",
        "end": "2100-01-01",
    }
    assert violations("standardPromotion", promotion) == []
    del promotion[missing]
    assert violations("standardPromotion", promotion)


# the simulator's answers


async def test_every_normal_answer_the_monitor_reads_follows_the_descriptions(
    store: Store,
) -> None:
    populate(store.sim)
    found: list[str] = []
    status, token = await store.token()
    assert status == 200
    found += violations("token", token)
    await store.authorise()

    lists = {"/v2/promotions": "standardPromotionList", "/v2/rule-promotions": "rulePromotionList"}
    promotions: list[Any] = []
    for path, definition in lists.items():
        for page in await every_page(store, path, **{"page[limit]": "4"}):
            found += violations(definition, page)
            promotions += page["data"]
    assert {p["type"] for p in promotions} == {"promotion", "rule_promotion"}
    assert any(not p["enabled"] for p in promotions)
    # One promotion by id, as the monitor reads it for its name.
    for promotion in promotions:
        rule = promotion["type"] == "rule_promotion"
        path = f"/v2/{'rule-promotions' if rule else 'promotions'}/{promotion['id']}"
        status, answer = await store.get(path)
        assert status == 200
        found += violations("rulePromotionAnswer" if rule else "standardPromotionAnswer", answer)
        assert answer["data"] == promotion

    seen: list[dict[str, Any]] = []
    for promotion in promotions:
        path, definition = job_page_kind(promotion)
        for params in ({"page[limit]": "5"}, {"filter": "eq(status, complete)"}):
            for page in await every_page(store, path, **params):
                found += violations(definition, page)
                seen += page["data"]
    assert found == []
    # the answers checked cover what the descriptions constrain
    kinds = {("rule_promotion_id" in job, job["job_type"], job["status"]) for job in seen}
    assert kinds >= {
        (rule, job_type, status)
        for rule in (False, True)
        for job_type in ("code_generate", "code_export")
        for status in ("pending", "processing", "completed", "failed", "cancelling", "cancelled")
    }
    assert any("result" in job and job["status"] == "cancelled" for job in seen)


async def test_error_answers_follow_the_descriptions(store: Store) -> None:
    pid = store.sim.add_promotion()
    rule = store.sim.add_promotion("rule_promotion")
    found: list[str] = []
    status, refused = await store.token({**CREDENTIALS, "client_secret": "wrong"})
    assert status == 401
    found += violations("tokenError", refused)
    status, unauthorised = await store.get(f"/v2/promotions/{pid}/jobs")
    assert status == 401
    found += violations("error", unauthorised)
    await store.authorise()
    answers = [
        ("/v2/promotions/no-such-promotion/jobs", None, 404),
        ("/v2/promotions/no-such-promotion", None, 404),  # the name lookup's
        (f"/v2/rule-promotions/{pid}", None, 404),  # a standard promotion is no rule promotion
        (f"/v2/rule-promotions/{pid}/jobs", None, 404),
        (f"/v2/promotions/{pid}/jobs", {"filter": "eq(status,failed"}, 400),
        (f"/v2/rule-promotions/{rule}/jobs", {"filter": "like(status,fail*)"}, 400),
        ("/v2/rule-promotions", {"filter": "eq(enabled,maybe)"}, 400),
        (f"/v2/promotions/{pid}/jobs", {"page[limit]": "101"}, 400),
    ]
    for path, params, expected in answers:
        status, body = await store.get(path, params)
        assert status == expected, (path, params)
        found += violations("error", body)
    assert found == []


# documented variants (simulator options), each valid against its own definition


async def test_generate_result_spelling_is_a_documented_variant(store: Store) -> None:
    store.sim.result_key = "generate_result"
    pid = store.sim.add_promotion("rule_promotion")
    store.sim.add_job(pid, status="completed", number_of_codes=300)
    store.sim.add_job(pid, status="cancelled", number_of_codes=300)
    await store.authorise()
    _, page = await store.get(f"/v2/rule-promotions/{pid}/jobs")
    assert violations("ruleJobPage", page) == []
    done, cancelled = page["data"]
    assert "result" not in done
    assert done["generate_result"] == {"generated": 300, "deleted": 0}
    assert cancelled["generate_result"]["deleted"] == cancelled["generate_result"]["generated"]


async def test_builder_lists_say_how_their_total_was_counted(store: Store) -> None:
    # PB PaginationMeta: results.total_method beside results.total; PS's meta has no such key.
    rule = store.sim.add_promotion("rule_promotion")
    standard = store.sim.add_promotion("promotion")
    await store.authorise()
    _, builder_page = await store.get(f"/v2/rule-promotions/{rule}/jobs")
    _, standard_page = await store.get(f"/v2/promotions/{standard}/jobs")
    assert violations("ruleJobPage", builder_page) == []
    assert builder_page["meta"]["results"] == {"total": 0, "total_method": "exact"}
    assert standard_page["meta"]["results"] == {"total": 0}


async def test_bare_rule_promotion_list_is_a_documented_variant(store: Store) -> None:
    store.sim.rule_list_shape = "bare"
    first = store.sim.add_promotion("rule_promotion")
    second = store.sim.add_promotion("rule_promotion", enabled=False)
    standard = store.sim.add_promotion()
    await store.authorise()
    _, bare = await store.get("/v2/rule-promotions")
    assert violations("rulePromotionListBare", bare) == []
    assert [item["data"]["id"] for item in bare] == [first, second]
    # the Promotions Standard list keeps its envelope
    _, listed = await store.get("/v2/promotions")
    assert violations("standardPromotionList", listed) == []
    assert [p["id"] for p in listed["data"]] == [standard]


async def test_wrapped_token_is_a_documented_variant(store: Store) -> None:
    store.sim.token_shape = "wrapped"
    status, body = await store.token()
    assert status == 200
    assert violations("tokenWrapped", body) == []
    assert violations("token", body)
    await store.authorise()
    assert (await store.get("/v2/promotions"))[0] == 200


def test_variants_are_constructor_keywords_with_the_documented_defaults() -> None:
    sim = Simulator()
    assert (sim.result_key, sim.rule_list_shape, sim.token_shape) == ("result", "envelope", "flat")
    sim = Simulator(result_key="generate_result", rule_list_shape="bare", token_shape="wrapped")
    assert (sim.result_key, sim.rule_list_shape, sim.token_shape) == (
        "generate_result",
        "bare",
        "wrapped",
    )
