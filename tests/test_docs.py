"""The documentation site: it builds with --strict, and its generated reference pages list what the
code has — every event class, every metric family a polling monitor exports, every configuration
key — each found here from the code by another route than docs/hooks.py takes."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import AliasChoices, BaseModel, Field

import monitor.events
from monitor.settings import Settings
from monitor.simulator import Simulator
from tests.deploy_support import alert_rules, rule_groups
from tests.support import in_process_monitor, long_ago

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGE = ROOT / "monitor"


class _Tables(HTMLParser):
    """The rows of every table of an HTML page: each cell as its text and its <code> texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[tuple[str, list[str]]]] = []
        self._cell: list[str] | None = None
        self._codes: list[str] = []
        self._in_code = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell, self._codes = [], []
        elif tag == "code" and self._cell is not None:
            self._in_code = True
            self._codes.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append((" ".join("".join(self._cell).split()), self._codes))
            self._cell = None
        elif tag == "code":
            self._in_code = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
            if self._in_code:
                self._codes[-1] += data


def table_rows(page: Path) -> list[list[tuple[str, list[str]]]]:
    parser = _Tables()
    parser.feed(page.read_text(encoding="utf-8"))
    return [row for row in parser.rows if row and row[0][0] and row[0][1]]  # (not headers)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as `make docs` builds it (strict: any warning fails the build)."""
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", str(out)],
        cwd=DOCS,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_the_strict_build_passes_and_serves_every_page_and_picture(site: Path) -> None:
    pages = sorted(p.relative_to(DOCS / "pages").with_suffix("") for p in DOCS.glob("pages/*.md"))
    for page in pages:
        built = site / "index.html" if page.name == "index" else site / page / "index.html"
        assert built.is_file(), page
    for html in site.rglob("*.html"):
        for src in re.findall(r'<img[^>]* src="([^"]+)"', html.read_text(encoding="utf-8")):
            if not src.startswith(("http:", "https:", "data:")):
                assert (html.parent / src).resolve().is_file(), f"{html}: {src}"


def test_every_alert_s_runbook_url_anchor_is_a_section_of_the_built_runbook(site: Path) -> None:
    built = (site / "runbook" / "index.html").read_text(encoding="utf-8")
    ids = set(re.findall(r'<h2 id="([^"]+)"', built))
    anchors = {
        rule["annotations"]["runbook_url"].split("#", 1)[1] for rule in alert_rules(rule_groups())
    }
    assert len(anchors) >= 10
    assert anchors <= ids


# events


def declared_events() -> Iterator[tuple[str, str, set[str]]]:
    """(name, level, fields) of every event class the module defines, from its namespace."""
    for value in vars(monitor.events).values():
        if (
            isinstance(value, type)
            and issubclass(value, monitor.events.Event)
            and hasattr(value, "NAME")
        ):
            yield value.NAME, value.LEVEL, {f.name for f in dataclasses.fields(value)}


def test_the_events_reference_lists_every_event_class_with_its_level_and_fields(
    site: Path,
) -> None:
    rows = table_rows(site / "reference" / "events" / "index.html")
    listed = {(row[0][1][0], row[1][0]): set(row[2][1]) for row in rows}
    declared = {(name, level): fields for name, level, fields in declared_events()}
    assert len(declared) >= 25
    assert listed == declared


# metrics


async def polled_exposition(sim: Simulator, tmp_path: Path) -> str:
    """/metrics of a monitor that has polled a promotion whose job failed."""
    pid = sim.add_promotion(name="Spring sale")
    running = sim.add_job(pid, status="processing", created_at=long_ago())
    sim.add_job(pid, status="failed", error="old", created_at=long_ago())
    polling = in_process_monitor(tmp_path, sim, [{"id": pid}], poll={"stuck_after_seconds": 60})
    await polling.run_once()
    sim.set_job_status(pid, running, "failed", error="codes limit exceeded")
    await polling.run_once()
    body, _ = polling.metrics.exposition.render("text/plain")
    return body.decode()


def exported_families(exposition: str) -> dict[str, set[str]]:
    """Family (as queried) -> the labels its samples carry, from the text /metrics serves."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name.endswith("_created"):
            continue  # (a counter's creation time, not a family of its own)
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = found.setdefault(name, set())
        for sample in family.samples:
            labels.update(key for key in sample.labels if key != "le")
    return found


async def test_the_metrics_reference_lists_every_family_a_polling_monitor_exports(
    site: Path, sim: Simulator, tmp_path: Path
) -> None:
    families = exported_families(await polled_exposition(sim, tmp_path))
    rows = table_rows(site / "reference" / "metrics" / "index.html")
    listed = {row[0][1][0]: set(row[2][1]) for row in rows}
    assert len(families) >= 25
    assert set(listed) == set(families)
    for name, labels in families.items():
        assert labels <= listed[name], name
    # a family with samples here shows every label it was given
    assert listed["epcc_promotion_job_failures_total"] == {"promotion_id", "job_type"}
    assert families["epcc_promotion_job_failures_total"] == {"promotion_id", "job_type"}


# configuration


def schema_keys(schema: dict[str, Any], node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every key of the settings' JSON Schema, sections and lists of entries walked into."""
    for name, prop in node.get("properties", {}).items():
        key = f"{prefix}{name}"
        options = prop.get("anyOf", [prop])
        sections = [defined(schema, o) for o in options if "properties" in defined(schema, o)]
        entries = [defined(schema, o["items"]) for o in options if "items" in o]
        entries = [entry for entry in entries if "properties" in entry]
        if not sections or len(options) > 1:
            yield key  # (a value, a list of entries, or an optional section: a key of its own)
        for section in sections:
            yield from schema_keys(schema, section, key + ".")
        for entry in entries:
            yield from schema_keys(schema, entry, key + "[].")


def defined(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A schema node, its `$ref` followed."""
    ref = node.get("$ref")
    return schema["$defs"][ref.rsplit("/", 1)[-1]] if ref else node


def test_the_configuration_reference_lists_every_key(site: Path) -> None:
    schema = Settings.model_json_schema()
    rows = table_rows(site / "reference" / "configuration" / "index.html")
    keys = {row[0][1][0] for row in rows if len(row) == 5}
    expected = set(schema_keys(schema, schema))
    assert len(expected) >= 40
    assert keys == expected


def test_the_configuration_reference_shows_the_environment_that_sets_a_key(site: Path) -> None:
    rows = table_rows(site / "reference" / "configuration" / "index.html")
    env = {row[0][1][0]: row[3][1] for row in rows if len(row) == 5}
    assert env["api.client_id"] == ["EPCC_CLIENT_ID"]
    assert env["sharding.shard_count"] == ["SHARD_COUNT"]
    assert env["poll.interval_seconds"] == []


def docs_hooks() -> Any:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Inner(BaseModel):
    limit: int = Field(5, ge=1, description="How many at most.")


class _Documented(BaseModel):
    """A section whose fields say what they mean and which variable sets them."""

    host: str = Field(
        "h", validation_alias=AliasChoices("host", "DOCS_HOST"), description="Where it runs."
    )
    port: int = Field(1, json_schema_extra={"env": "DOCS_PORT"})
    inner: _Inner | None = None


def test_a_key_shows_its_description_and_the_variable_its_field_declares() -> None:
    rows = {row.key: row for row in docs_hooks().config_rows(_Documented)}
    assert list(rows) == ["host", "port", "inner", "inner.limit"]
    assert (rows["host"].description, rows["host"].env) == ("Where it runs.", "`DOCS_HOST`")
    assert (rows["port"].description, rows["port"].env) == ("", "`DOCS_PORT`")
    assert (rows["inner"].type, rows["inner"].default) == ("section", "unset")
    limit = rows["inner.limit"]
    assert (limit.type, limit.default, limit.description) == (
        "integer, ≥ 1",
        "`5`",
        "How many at most.",
    )


# the architecture page's map of the code


def modules_in_the_table() -> set[str]:
    text = (DOCS / "pages" / "architecture.md").read_text(encoding="utf-8")
    table = text.split("## Modules", 1)[1].split("\n\n|", 1)[1]
    rows = [line for line in ("|" + table).splitlines() if line.startswith("| `")]
    named: set[str] = set()
    for row in rows:
        first = row.split("|")[1]
        named.update(re.findall(r"`([a-z_/]+)`", first))
        # `client/`'s and `simulator/`'s parts are listed in the second column
        if first.strip().endswith("/`"):
            package = first.strip().strip("`")
            named.update(package + part for part in re.findall(r"`([a-z_]+)`", row.split("|")[2]))
    return named


def modules_in_the_package() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if path.name in ("__init__.py", "__main__.py"):
            if path.name == "__init__.py" and relative.parent != Path():
                found.add(f"{relative.parent.as_posix()}/")
            continue
        found.add(relative.with_suffix("").as_posix())
    return found


def test_the_architecture_page_names_every_module() -> None:
    assert modules_in_the_package() == modules_in_the_table()


def test_the_readme_is_a_front_door() -> None:
    """At most 150 lines, and every page it links to exists."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    links = re.findall(r"\]\((docs/pages/[^)#]+)", readme)
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).is_file(), link
