"""Job parsing: the shared API fixtures as given, a tolerance table, timestamps, and a property."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.models import Job, parse_job, parse_jobs, parse_timestamp

# Elastic Path's documented example responses (copied from shared/fixtures, see its README).
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture_json(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> float:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC).timestamp()


CREATED = utc(2023, 12, 6, 13, 52, 29, 587_000)
UPDATED = utc(2023, 12, 6, 13, 54, 49, 133_000)


# the shared fixtures


def test_failed_promotion_job_fixture() -> None:
    page = fixture_json("promotion-jobs-failed.json")

    parsed = parse_jobs(page["data"])

    assert parsed.skipped == []
    assert parsed.jobs == [
        Job(
            id="84d86114-a92d-4c34-92f1-3e36ef6cabeb",
            job_type="code_generate",
            status="failed",
            error="codes limit exceeded",
            created_at=CREATED,
            updated_at=UPDATED,
            name="job",
            codes_requested=1000,
        )
    ]
    [job] = parsed.jobs
    assert job.is_terminal
    assert not job.is_active
    assert job.duration == pytest.approx(139.546)


def test_rule_promotion_job_fixture_with_nanosecond_timestamps() -> None:
    document = fixture_json("rule-promotion-job-created.json")
    assert isinstance(document["data"], dict)

    job = parse_job(document["data"])

    # 2024-12-04T00:03:46.388696042Z: nanoseconds are cut, microseconds kept
    at = utc(2024, 12, 4, 0, 3, 46, 388_696)
    assert job == Job(
        id="bd5708f6-d330-40a2-a6bd-b2e44bb3ce02",
        job_type="code_export",
        status="pending",
        error=None,
        created_at=at,
        updated_at=at,
        name="Demo export codes",
    )
    assert isinstance(job, Job)
    assert job.is_active
    assert job.status_since == at


# what the jobs produced


GENERATE = {
    "type": "promotion_job",
    "id": "84d86114-a92d-4c34-92f1-3e36ef6cabeb",
    "job_type": "code_generate",
    "name": "Spring codes",
    "parameters": {"number_of_codes": 1000, "consume_unit": "per_application"},
    "status": "completed",
    "meta": {
        "timestamps": {"created_at": "2024-12-04T00:03:46Z", "updated_at": "2024-12-04T00:05:00Z"}
    },
}


@pytest.mark.parametrize(
    ("extra", "generated", "deleted"),
    [
        ({"result": {"generated": 640, "deleted": None}}, 640, None),
        ({"generate_result": {"generated": 640, "deleted": 0}}, 640, 0),  # Builder SDK spelling
        ({"result": {"generated": 640}, "generate_result": {"generated": 1}}, 640, None),
        ({"result": None}, None, None),
        ({}, None, None),
        ({"result": {"generated": "640", "deleted": -1}}, None, None),  # not counts
        ({"result": {"generated": 1000.0, "deleted": True}}, 1000, None),
    ],
    ids=["result", "generate_result", "result wins", "null", "absent", "junk", "float"],
)
def test_codes_are_read_from_either_result_spelling(
    extra: dict[str, Any], generated: int | None, deleted: int | None
) -> None:
    job = parse_job({**GENERATE, **extra})
    assert isinstance(job, Job)
    assert (job.name, job.codes_requested) == ("Spring codes", 1000)
    assert (job.codes_generated, job.codes_deleted) == (generated, deleted)
    assert job.shortfall is (generated is not None and generated < 1000)


def test_a_result_that_arrives_after_the_status_is_not_missed_by_reuse() -> None:
    first = parse_job(GENERATE)
    assert isinstance(first, Job)
    later = parse_job({**GENERATE, "result": {"generated": 640}}, {first.id: first})
    assert isinstance(later, Job)
    assert later is not first
    assert later.codes_generated == 640
    again = parse_job({**GENERATE, "result": {"generated": 640}}, {later.id: later})
    assert again is later


# tolerance

BASE: dict[str, Any] = {
    "type": "promotion_job",
    "id": "84d86114-a92d-4c34-92f1-3e36ef6cabeb",
    "promotion_id": "ad386702-e780-42c6-b190-0527ad768917",
    "job_type": "code_generate",
    "name": "job",
    "status": "failed",
    "error": "codes limit exceeded",
    "meta": {
        "timestamps": {
            "created_at": "2023-12-06T13:52:29.587Z",
            "updated_at": "2023-12-06T13:54:49.133Z",
        }
    },
}
BASE_JOB = Job(
    "84d86114-a92d-4c34-92f1-3e36ef6cabeb",
    "code_generate",
    "failed",
    "codes limit exceeded",
    CREATED,
    UPDATED,
    name="job",
)
LONG_ERROR = "Promotion code generation failed:\n\tdatabase   timeout\r\n" + "detail " * 100
LONG_ERROR_WORDS = " ".join(LONG_ERROR.split())


def changed(**fields: Any) -> dict[str, Any]:
    return {**BASE, **fields}


def without(*keys: str) -> dict[str, Any]:
    return {k: v for k, v in BASE.items() if k not in keys}


def expected(**fields: Any) -> Job:
    values = {
        "id": BASE_JOB.id,
        "job_type": BASE_JOB.job_type,
        "status": BASE_JOB.status,
        "error": BASE_JOB.error,
        "created_at": BASE_JOB.created_at,
        "updated_at": BASE_JOB.updated_at,
        "name": BASE_JOB.name,
        **fields,
    }
    return Job(**values)


TOLERATED: dict[str, tuple[object, Job]] = {
    "as documented": (BASE, BASE_JOB),
    "extra fields": (
        changed(result={"generated": 10}, generate_result={}, surprise=[1, {"x": None}]),
        expected(codes_generated=10),
    ),
    "name missing": (without("name"), expected(name=None)),
    "name not text": (changed(name=["job"]), expected(name=None)),
    "parameters not an object": (changed(parameters=1000), BASE_JOB),
    "result not an object": (changed(result="1000 codes"), BASE_JOB),
    "rule_promotion_id": (
        {**without("promotion_id"), "rule_promotion_id": "dd85ee8b-fddd-4ae8-9a4d-eb9404ead7bd"},
        BASE_JOB,
    ),
    "unknown status kept": (changed(status="on_hold"), expected(status="on_hold")),
    "unknown status lower-cased": (changed(status="On_Hold"), expected(status="on_hold")),
    "complete means completed": (changed(status="complete"), expected(status="completed")),
    "upper-case completed": (changed(status="COMPLETED"), expected(status="completed")),
    "padded status": (changed(status="  Failed \n"), expected(status="failed")),
    "missing status": (without("status"), expected(status="unknown")),
    "status not a string": (changed(status=3), expected(status="unknown")),
    "missing job_type": (without("job_type"), expected(job_type="unknown")),
    "job_type not a string": (changed(job_type=None), expected(job_type="unknown")),
    "new job_type kept": (changed(job_type="code_import"), expected(job_type="code_import")),
    "meta missing": (without("meta"), expected(created_at=None, updated_at=None)),
    "meta not an object": (changed(meta=["x"]), expected(created_at=None, updated_at=None)),
    "timestamps not an object": (
        changed(meta={"timestamps": "2023-12-06T13:52:29.587Z"}),
        expected(created_at=None, updated_at=None),
    ),
    "timestamps garbage": (
        changed(meta={"timestamps": {"created_at": "yesterday", "updated_at": 1701870749}}),
        expected(created_at=None, updated_at=None),
    ),
    "one timestamp missing": (
        changed(meta={"timestamps": {"updated_at": "2023-12-06T13:54:49.133Z"}}),
        expected(created_at=None),
    ),
    "error missing": (without("error"), expected(error=None)),
    "error empty": (changed(error=""), expected(error=None)),
    "error a number": (changed(error=500), expected(error=None)),
    "error an object": (changed(error={"detail": "x"}), expected(error=None)),
    "error a list": (changed(error=["codes limit exceeded"]), expected(error=None)),
}


@pytest.mark.parametrize(("obj", "job"), TOLERATED.values(), ids=TOLERATED.keys())
def test_tolerated_shapes(obj: object, job: Job) -> None:
    assert parse_job(obj) == job


def test_long_multiline_error_becomes_one_capped_line() -> None:
    job = parse_job(changed(error=LONG_ERROR))

    assert isinstance(job, Job)
    assert job.error is not None
    assert len(job.error) <= 200
    assert len(job.error.splitlines()) == 1
    assert "\t" not in job.error
    assert "  " not in job.error
    # the start of the message survives, whitespace folded to single spaces
    assert job.error.startswith(LONG_ERROR_WORDS[:150])
    assert len(job.error) >= 190


SKIPPED: dict[str, object] = {
    "missing id": without("id"),
    "empty id": changed(id=""),
    "blank id": changed(id="  \t"),
    "numeric id": changed(id=42),
    "null id": changed(id=None),
    "list id": changed(id=["84d86114"]),
    "job is a list": [BASE],
    "job is an int": 7,
    "job is None": None,
    "job is a string": "84d86114-a92d-4c34-92f1-3e36ef6cabeb",
    "job is a bool": True,
}


@pytest.mark.parametrize("obj", SKIPPED.values(), ids=SKIPPED.keys())
def test_unidentifiable_jobs_are_skipped_with_a_reason(obj: object) -> None:
    reason = parse_job(obj)
    assert isinstance(reason, str)
    assert reason.strip()


def test_a_page_keeps_every_job_it_can_identify() -> None:
    other = changed(id="second", status="pending", error=None)
    parsed = parse_jobs([BASE, None, without("id"), other, "junk"])

    assert [job.id for job in parsed.jobs] == [BASE_JOB.id, "second"]
    assert len(parsed.skipped) == 3
    assert all(isinstance(reason, str) and reason for reason in parsed.skipped)


# timestamps

TIMESTAMPS: dict[str, tuple[object, float | None]] = {
    "Z": ("2023-12-06T13:52:29.587Z", CREATED),
    "+00:00": ("2023-12-06T13:52:29.587+00:00", CREATED),
    "other offset": ("2023-12-06T15:52:29.587+02:00", CREATED),
    "naive is UTC": ("2023-12-06T13:52:29.587", CREATED),
    "no fraction": ("2023-12-06T13:52:29Z", utc(2023, 12, 6, 13, 52, 29)),
    "microseconds": ("2024-12-04T00:03:46.388696Z", utc(2024, 12, 4, 0, 3, 46, 388_696)),
    "nanoseconds": ("2024-12-04T00:03:46.388696042Z", utc(2024, 12, 4, 0, 3, 46, 388_696)),
    "nanoseconds naive": ("2024-12-04T00:03:46.388696042", utc(2024, 12, 4, 0, 3, 46, 388_696)),
    "nanoseconds with offset": (
        "2024-12-04T01:03:46.388696042+01:00",
        utc(2024, 12, 4, 0, 3, 46, 388_696),
    ),
    "padded": ("  2023-12-06T13:52:29.587Z\n", CREATED),
    # RFC 3339 (the descriptions' format: date-time) allows these too.
    "lower-case t and z": ("2023-12-06t13:52:29.587z", CREATED),
    "leap second": ("2016-12-31T23:59:60Z", utc(2016, 12, 31, 23, 59, 59)),
    "leap second with nanoseconds": (
        "2016-12-31T23:59:60.123456789Z",
        utc(2016, 12, 31, 23, 59, 59, 123_456),
    ),
    # Valid date-times that say nothing: Go's zero time, Unix's; no promotion job is that old.
    "Go's zero time": ("0001-01-01T00:00:00Z", None),
    "Unix zero": ("1970-01-01T00:00:00Z", None),
    "garbage": ("yesterday", None),
    "impossible date": ("2023-13-45T00:00:00Z", None),
    "empty": ("", None),
    "blank": ("   ", None),
    "None": (None, None),
    "epoch number": (1_701_870_749, None),
    "float": (1.5, None),
    "list": (["2023-12-06T13:52:29.587Z"], None),
    "dict": ({"at": "2023-12-06T13:52:29.587Z"}, None),
}


@pytest.mark.parametrize(("value", "epoch"), TIMESTAMPS.values(), ids=TIMESTAMPS.keys())
def test_parse_timestamp(value: object, epoch: float | None) -> None:
    assert parse_timestamp(value) == epoch


def test_a_job_updated_before_it_was_created_has_an_unknown_update_time() -> None:
    stamps = {"created_at": "2024-12-04T00:03:46Z", "updated_at": "2024-12-04T00:03:45Z"}
    parsed = parse_job({"id": "j", "status": "failed", "meta": {"timestamps": stamps}})
    assert isinstance(parsed, Job)
    assert parsed.updated_at is None
    assert parsed.status_since == parsed.created_at == utc(2024, 12, 4, 0, 3, 46)


# never raises

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
TIMESTAMP_TEXT = (
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat())
    | st.text()
    | JSON
)
JOB_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text() | JSON,
        "status": st.sampled_from(["pending", "Complete", "FAILED", " cancelled\n"])
        | st.text()
        | JSON,
        "job_type": st.text() | JSON,
        "error": st.text() | JSON,
        "meta": JSON
        | st.fixed_dictionaries(
            {},
            optional={
                "timestamps": JSON
                | st.fixed_dictionaries(
                    {}, optional={"created_at": TIMESTAMP_TEXT, "updated_at": TIMESTAMP_TEXT}
                )
            },
        ),
    },
)


def check_parsed(obj: object) -> None:
    parsed = parse_job(obj)
    if isinstance(parsed, str):
        assert parsed
        return
    assert isinstance(parsed, Job)
    assert parsed.id
    assert parsed.id == parsed.id.strip()
    for text, limit in ((parsed.status, 64), (parsed.job_type, 64), (parsed.error, 200)):
        if text is not None:
            assert text
            assert len(text) <= limit
            assert len(text.splitlines()) == 1
    for at in (parsed.created_at, parsed.updated_at):
        assert at is None or isinstance(at, float)


@settings(database=None, max_examples=300)
@given(JSON)
def test_parse_job_never_raises_on_any_json_value(obj: object) -> None:
    check_parsed(obj)


@settings(database=None, max_examples=300)
@given(JOB_LIKE)
def test_parse_job_never_raises_on_job_like_objects(obj: dict[str, Any]) -> None:
    check_parsed(obj)


@settings(database=None, max_examples=100)
@given(st.lists(JSON | JOB_LIKE, max_size=10))
def test_parse_jobs_accounts_for_every_object(data: list[object]) -> None:
    parsed = parse_jobs(data)
    assert len(parsed.jobs) + len(parsed.skipped) == len(data)


def _raw(
    status: str = "processing", updated: str = "2024-12-04T00:03:46.388Z", **extra: object
) -> dict[str, object]:
    job: dict[str, object] = {
        "id": "84d86114-a92d-4c34-92f1-3e36ef6cabeb",
        "job_type": "code_generate",
        "status": status,
        "meta": {"timestamps": {"created_at": "2024-12-04T00:00:00Z", "updated_at": updated}},
    }
    job.update(extra)
    return job


def test_an_unchanged_job_is_reused_from_what_the_monitor_holds() -> None:
    first = parse_job(_raw())
    assert isinstance(first, Job)
    known = {first.id: first}
    assert parse_job(_raw(), known) is first


@pytest.mark.parametrize(
    "changed",
    [
        _raw(status="failed"),
        _raw(updated="2024-12-04T00:09:00.000Z"),
        _raw(error="codes limit exceeded"),
        _raw(status=["not", "a", "string"]),  # type: ignore[arg-type]
        _raw(status="COMPLETED"),
    ],
)
def test_any_change_in_status_error_or_updated_at_is_parsed_afresh(
    changed: dict[str, object],
) -> None:
    first = parse_job(_raw())
    assert isinstance(first, Job)
    again = parse_job(changed, {first.id: first})
    fresh = parse_job(changed)
    assert again is not first
    assert again == fresh


def test_reuse_reads_the_result_under_either_spelling() -> None:
    # `result: null` beside a `generate_result` that gains a count: the count must be seen.
    first = parse_job({**GENERATE, "result": None, "generate_result": {}})
    assert isinstance(first, Job)
    later = parse_job(
        {**GENERATE, "result": None, "generate_result": {"generated": 7}}, {first.id: first}
    )
    assert isinstance(later, Job)
    assert later.codes_generated == 7
