"""deploy/grafana and the docs' example PromQL: they query only metrics the monitor exports, and
the codes panels evaluate as intended (promtool).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.deploy_support import (
    DASHBOARD,
    MONITOR_METRIC_NAMES,
    ROOT,
    dashboard_metric_names,
    dashboard_queries,
    metric_names_in,
    run,
)

pytestmark = pytest.mark.tools


def test_dashboard_queries_only_exported_metrics() -> None:
    names = dashboard_metric_names(DASHBOARD)
    assert names <= MONITOR_METRIC_NAMES, f"unknown metrics: {names - MONITOR_METRIC_NAMES}"
    # failures by promotion and error, jobs by status, stuck, poll health, API request rates
    assert {
        "epcc_promotion_job_failures_total",
        "epcc_promotion_job_errors_total",
        "epcc_promotion_job_failed_info",
        "epcc_promotion_jobs",
        "epcc_promotion_jobs_stuck",
        "epcc_monitor_up",
        "epcc_monitor_poll_duration_seconds",
        "epcc_monitor_poll_errors_total",
        "epcc_monitor_api_requests_total",
        "epcc_promotion_codes_generated_total",
        "epcc_promotion_codes_deleted_total",
        "epcc_promotion_job_shortfalls_total",
        "epcc_promotion_info",
    } <= names


def _codes_fixture(metric: str) -> list[dict[str, str]]:
    """Two replicas see p-1's 1000 codes at 11m and 12m; p-2 (250 codes) has no known name."""
    shop = 'namespace="shop",job="shop/promo-monitor"'
    pod_a = f'{shop},instance="10.0.0.5:10464",pod="shop-api-a"'
    pod_b = f'{shop},instance="10.0.0.6:10464",pod="shop-api-b"'
    return [
        {"series": f'{metric}{{{pod_a},promotion_id="p-1"}}', "values": "0x10 1000x50"},
        {"series": f'{metric}{{{pod_b},promotion_id="p-1"}}', "values": "0x11 1000x49"},
        {"series": f'{metric}{{{pod_a},promotion_id="p-2"}}', "values": "0x10 250x50"},
        {
            "series": f'epcc_promotion_info{{{pod_a},promotion_id="p-1",kind="promotion",'
            'name="Summer sale"}',
            "values": "1x60",
        },
        {
            "series": f'epcc_promotion_info{{{pod_b},promotion_id="p-1",kind="promotion",'
            'name="Summer sale"}',
            "values": "1x60",
        },
    ]


def _promtool_expr_test(
    promtool: str, tmp_path: Path, expr: str, series: list[dict[str, str]], samples: dict[str, int]
) -> None:
    """Evaluate `expr` at 60m over `series` (one sample a minute) and compare with `samples`."""
    suite = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "60m",
                        "exp_samples": [{"labels": k, "value": v} for k, v in samples.items()],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "expr.test.yaml"
    path.write_text(yaml.safe_dump(suite), encoding="utf-8")
    assert "SUCCESS" in run(promtool, "test", "rules", path)


@pytest.mark.parametrize(
    "metric",
    [
        "epcc_promotion_codes_generated_total",
        "epcc_promotion_codes_deleted_total",
        "epcc_promotion_job_shortfalls_total",
    ],
)
def test_dashboard_codes_panels_name_promotions_and_count_replicas_once(
    promtool: str, tmp_path: Path, metric: str
) -> None:
    """By name when epcc_promotion_info has one, by id otherwise; two replicas are one count."""
    queries = [q for q in dashboard_queries(DASHBOARD) if metric in q]
    assert queries, f"no panel shows {metric}"
    for query in queries:
        assert "epcc_promotion_info" in query, query
        expr = (
            query.replace("$promotion_id", ".*")
            .replace("$__range", "1h")
            .replace("$__rate_interval", "1h")
        )
        expected = {
            '{promotion_id="p-1",name="Summer sale"}': 1000,
            '{promotion_id="p-2",name="p-2"}': 250,
        }
        _promtool_expr_test(promtool, tmp_path, expr, _codes_fixture(metric), expected)


def documented_promql_examples() -> list[str]:
    """The expressions of the "Example PromQL" block of docs/pages/reporting.md (indented lines
    continue one)."""
    text = (ROOT / "docs" / "pages" / "reporting.md").read_text(encoding="utf-8")
    found = re.search(r"## Example PromQL\n+```promql\n(.*?)```", text, re.S)
    assert found, "docs/pages/reporting.md has no Example PromQL block"
    expressions: list[str] = []
    for line in found.group(1).splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line[0].isspace():
            expressions[-1] += "\n" + line
        else:
            expressions.append(line)
    return expressions


def test_documented_promql_examples_parse_and_use_exported_metrics(
    promtool: str, tmp_path: Path
) -> None:
    expressions = documented_promql_examples()
    assert len(expressions) >= 10
    for expr in expressions:
        assert metric_names_in(expr) <= MONITOR_METRIC_NAMES, expr
    rules = [{"record": f"docs:example_{n}", "expr": e} for n, e in enumerate(expressions)]
    path = tmp_path / "docs-examples.yaml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "docs", "rules": rules}]}), encoding="utf-8"
    )
    assert f"SUCCESS: {len(expressions)} rules found" in run(promtool, "check", "rules", path)


def test_documented_codes_by_name_example(promtool: str, tmp_path: Path) -> None:
    """Codes per promotion by name: two replicas count once; an unnamed promotion is left out."""
    (expr,) = [e for e in documented_promql_examples() if "group_left (name)" in e]
    metric = "epcc_promotion_codes_generated_total"
    expected = {'{promotion_id="p-1",name="Summer sale"}': 1000}
    _promtool_expr_test(promtool, tmp_path, expr, _codes_fixture(metric), expected)


def test_dashboard_names_fold_histogram_series(tmp_path: Path) -> None:
    dashboard = {
        "panels": [
            {"type": "row", "panels": [{"targets": [{"expr": "rate(epcc_x_seconds_bucket[5m])"}]}]},
            {"targets": [{"expr": 'sum(epcc_y_total{job="a"}) / sum(epcc_x_seconds_count)'}]},
        ],
        "templating": {"list": [{"query": {"query": "label_values(epcc_z, promotion_id)"}}]},
    }
    path = tmp_path / "dashboard.json"
    path.write_text(json.dumps(dashboard), encoding="utf-8")
    assert dashboard_metric_names(path) == {"epcc_x_seconds", "epcc_y_total", "epcc_z"}


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "promo-monitor"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["promotion_id"]["type"] == "query"
    assert variables["promotion_id"]["includeAll"] is True

    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    per_promotion = [q for q in dashboard_queries(DASHBOARD) if "$promotion_id" in q]
    assert len(per_promotion) >= 5
