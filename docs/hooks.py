"""MkDocs hooks: the reference pages, generated from the code at every build so they cannot drift.

- reference/configuration.md: every key of the pydantic models in monitor/settings.py, with its
  type, default and description, and the environment variables its BaseSettings models read;
- reference/metrics.md: every metric family on a fresh registry of a monitor built the way
  `promo-monitor run` builds it (Monitor.build), with its type, labels and help;
- reference/events.md: every event class of monitor/events.py, with its level and fields.

docs/notes.yaml adds an operator's explanation to a metric or an event; a note for a metric or
an event that does not exist fails the build. The benchmark plots and the status page's
screenshot are served from where the benchmarks and the browser test write them, not copied.
"""

from __future__ import annotations

import dataclasses
import enum
import tempfile
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from pydantic import AliasChoices, BaseModel, SecretStr
from pydantic.fields import FieldInfo

from monitor import events, settings
from monitor.app import Monitor
from monitor.models import Job, PromotionKind, PromotionSnapshot
from monitor.settings import environment

ROOT = Path(__file__).resolve().parent.parent
NOTES = Path(__file__).resolve().parent / "notes.yaml"
# Pictures the docs show, at the path the pages use -> where the repository keeps them.
PICTURES = {
    "images/status-page.png": ROOT / "deploy" / "status-page.png",
    **{
        f"performance/{png.name}": png
        for png in sorted((ROOT / "tests" / "benchmarks" / "results").glob("*.png"))
    },
}
# Front matter of a page that is one wide table: no table of contents beside it.
_WIDE = ("---", "hide:", "  - toc", "---", "")
CONFIG_PAGE = "reference/configuration.md"
METRICS_PAGE = "reference/metrics.md"
EVENTS_PAGE = "reference/events.md"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    notes = _notes()
    pages = {
        CONFIG_PAGE: configuration_page(),
        METRICS_PAGE: metrics_page(notes.get("metrics", {})),
        EVENTS_PAGE: events_page(notes.get("events", {})),
    }
    for uri, text in pages.items():
        files.append(File.generated(config, uri, content=text))
    for uri, path in PICTURES.items():
        if path.is_file():
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def _notes() -> dict[str, dict[str, str]]:
    loaded = yaml.safe_load(NOTES.read_text(encoding="utf-8")) or {}
    if not isinstance(loaded, dict):
        raise PluginError(f"{NOTES}: must be a mapping with `metrics` and `events`")
    return loaded


def _cell(text: object) -> str:
    """Text safe inside one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", r"\|")


def _table(header: tuple[str, ...], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return [*lines, ""]


# configuration


class ConfigRow(NamedTuple):
    key: str
    type: str
    default: str
    description: str
    env: str


_BOUNDS = ((Gt, "gt", ">"), (Ge, "ge", "≥"), (Lt, "lt", "<"), (Le, "le", "≤"))
_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    Path: "file path",
    SecretStr: "string (secret)",
}


def _number(value: object) -> str:
    return (
        f"{value:g}"
        if isinstance(value, int | float) and not isinstance(value, bool)
        else str(value)
    )


def _constraints(metadata: list[Any]) -> list[str]:
    found = []
    for item in metadata:
        for kind, attr, sign in _BOUNDS:
            if isinstance(item, kind):
                found.append(f"{sign} {_number(getattr(item, attr))}")
        if isinstance(item, MinLen):
            found.append(f"length ≥ {item.min_length}")
        if isinstance(item, MaxLen):
            found.append(f"length ≤ {item.max_length}")
    return found


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _type_name(annotation: Any) -> str:
    annotation, _ = _strip_optional(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        metadata = [m for info in extra if isinstance(info, FieldInfo) for m in info.metadata]
        return ", ".join([_type_name(inner), *_constraints(metadata)])
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"list of {_type_name(item)}"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(f"`{member.value}`" for member in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _field_type(field: FieldInfo) -> str:
    return ", ".join([_type_name(field.annotation), *_constraints(field.metadata)])


def _yaml_value(value: object) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(item) for item in value) + "]"
    return str(value)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return ""
    return f"`{_yaml_value(value)}`"


def _section_model(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """The model a field holds (a section), and whether it is a list of them."""
    annotation, _ = _strip_optional(annotation)
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        found = _section_model(item)
        return (found[0], True) if found else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None


def _declared_env(field: FieldInfo) -> str:
    """An environment variable the field itself declares (json_schema_extra `env`, or an alias)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    named = extra.get("env")
    if isinstance(named, str):
        return f"`{named}`"
    if isinstance(named, list):
        return ", ".join(f"`{item}`" for item in named)
    alias = field.validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
    # (an upper-case alias is an environment variable's name, not a YAML key)
    names = [name for name in choices if isinstance(name, str) and name.isupper()]
    return ", ".join(f"`{name}`" for name in names)


def config_rows(model: type[BaseModel], prefix: str = "") -> Iterator[ConfigRow]:
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        section = _section_model(field.annotation)
        if section is not None:
            inner, many = section
            if many or (not field.is_required() and field.get_default() is None):
                # a list of entries, or an optional section: the key itself is a row too
                kind = "list of entries" if many else "section"
                yield ConfigRow(key, kind, _default(field), field.description or "", "")
            yield from config_rows(inner, f"{key}[]." if many else f"{key}.")
            continue
        yield ConfigRow(
            key, _field_type(field), _default(field), field.description or "", _declared_env(field)
        )


class EnvRow(NamedTuple):
    name: str
    type: str
    key: str
    description: str


def environment_rows(keys: list[str]) -> list[EnvRow]:
    """Every variable that overrides a key (monitor/settings/environment.py's OVERRIDES)."""
    rows = []
    for name, (section, key) in environment.OVERRIDES.items():
        model = _section_model(settings.Settings.model_fields[section].annotation)
        field = model[0].model_fields[key] if model else None
        dotted = f"{section}.{key}"
        rows.append(
            EnvRow(
                f"`{name}`",
                _field_type(field) if field else "",
                dotted if dotted in keys else "",
                (field.description or "") if field else "",
            )
        )
    return rows


def configuration_page() -> str:
    rows = list(config_rows(settings.Settings))
    keys = [row.key for row in rows]
    env_rows = environment_rows(keys)
    by_key = {row.key: row.name for row in env_rows if row.key}
    lines = [
        "# Configuration reference",
        "",
        "Generated from the pydantic models of `monitor/settings/schema.py` at each docs build:",
        "every key the YAML file may hold, its type, its default and what it means. Unknown keys",
        "are errors. How the file, the environment and the pod's facts combine is told in",
        "[Configuration](../configuration.md); `config/monitor.example.yaml` is an example",
        "with comments.",
        "",
    ]
    for section, field in settings.Settings.model_fields.items():
        own = [
            row
            for row in rows
            if row.key == section or row.key.startswith((f"{section}.", f"{section}[]."))
        ]
        lines += [f"## `{section}`", ""]
        model = _section_model(field.annotation)
        about = field.description or (model[0].__doc__ if model else None) or ""
        if about.strip():
            lines += [" ".join(about.split()), ""]
        lines += _table(
            ("key", "type", "default", "environment", "meaning"),
            [
                (
                    f"`{row.key}`",
                    row.type,
                    row.default,
                    ", ".join(filter(None, (row.env, by_key.get(row.key, "")))),
                    row.description,
                )
                for row in own
            ],
        )
    lines += [
        "## Environment variables",
        "",
        "Each wins over the key it sets in the file (`monitor/settings/environment.py`); the pod's",
        "own facts (`SHARD_INDEX`, `POD_NAME`, `POD_NAMESPACE`) fill keys left unset, as",
        "[Configuration](../configuration.md) tells.",
        "",
        *_table(
            ("variable", "type", "sets", "meaning"),
            [(r.name, r.type, f"`{r.key}`" if r.key else "", r.description) for r in env_rows],
        ),
    ]
    return "\n".join(lines)


# metrics


class FamilyRow(NamedTuple):
    name: str
    type: str
    labels: tuple[str, ...]
    help: str


# The names under which a family's samples are queried (text format 0.0.4).
_SAMPLE_NAME = {"counter": "{}_total", "info": "{}_info"}


def _label_names(monitor: Monitor) -> dict[str, tuple[str, ...]]:
    """Label names of the monitor's metrics, whose families carry none until a series exists:
    prometheus_client keeps them on the metric object, the promotion series on theirs."""
    found: dict[str, tuple[str, ...]] = {}
    for value in vars(monitor.metrics).values():
        names = getattr(value, "_labelnames", None)
        if not isinstance(names, tuple):
            continue
        family = getattr(value, "family", None)
        if family is not None:  # a promotion series (monitor.sinks.exposition)
            found[family.name] = names
        describe = getattr(value, "describe", None)
        if callable(describe):
            for described in describe():
                found[described.name] = names
    return found


def metric_families() -> list[FamilyRow]:
    """Every family in /metrics of a monitor built as `run` builds it, watching one promotion
    with a failed and a processing job (so that the job gauges have samples)."""
    pid = "ad386702-e780-42c6-b190-0527ad768917"
    with tempfile.TemporaryDirectory() as state:
        config = settings.parse_settings(
            {
                "api": {
                    "base_url": "http://127.0.0.1:9",
                    "client_id": "docs",
                    "client_secret": "docs",
                },
                "promotions": [{"id": pid}],
                "state": {"path": str(Path(state) / "monitor.db")},
            }
        )
        monitor = Monitor.build(config, registry=CollectorRegistry(), serve_http=False)
        monitor.metrics.watch(pid)
        monitor.names.set(pid, PromotionKind.PROMOTION, "Docs")
        jobs = (
            Job("j1", "code_generate", "failed", "codes limit exceeded", 1.0, 2.0),
            Job("j2", "code_export", "processing", None, 1.0, 1.0),
        )
        monitor.store.put(PromotionSnapshot(pid, {job.id: job for job in jobs}))
        text, _ = monitor.metrics.exposition.render("text/plain")
        labels = _label_names(monitor)
        rows = []
        for family in text_string_to_metric_families(text.decode()):
            sampled = {key for sample in family.samples for key in sample.labels}
            named = labels.get(family.name) or tuple(sorted(sampled))
            if family.type == "info":
                named = tuple(sorted(sampled))
            name = _SAMPLE_NAME.get(family.type, "{}").format(family.name)
            rows.append(FamilyRow(name, family.type, tuple(named), family.documentation))
        return rows


def metrics_page(notes: dict[str, str]) -> str:
    families = metric_families()
    unknown = set(notes) - {family.name for family in families}
    if unknown:
        raise PluginError(f"{NOTES}: notes for metrics that do not exist: {sorted(unknown)}")
    lines = [
        *_WIDE,
        "# Metrics reference",
        "",
        "Generated when the docs are built, from a fresh registry given to a monitor built the way",
        "`promo-monitor run` builds it: every family `/metrics` serves. Counters are queried by",
        "their `_total` name; histograms as `_bucket`, `_sum` and `_count`. The `epcc_promotion_*`",
        "families and the per-promotion `epcc_monitor_*` ones are served only by the replica that",
        "polls (see [coordination](../configuration.md#one-poller-per-workload-coordination)).",
        "",
        *_table(
            ("metric", "type", "labels", "help", "notes"),
            [
                (
                    f"`{family.name}`",
                    family.type,
                    ", ".join(f"`{label}`" for label in family.labels),
                    family.help,
                    notes.get(family.name, ""),
                )
                for family in families
            ],
        ),
        "`promtool check metrics` reports nothing on `/metrics` (a test checks it).",
        "",
    ]
    return "\n".join(lines)


# events


def _field_text(field: dataclasses.Field[Any]) -> str:
    kind = str(field.type)
    optional = kind.endswith(" | None")
    return (
        f"`{field.name}`"
        + (" (optional)" if optional else "")
        + f": {kind.removesuffix(' | None')}"
    )


def events_page(notes: dict[str, str]) -> str:
    declared = list(vars(events))  # (a module's namespace keeps the order of its definitions)
    classes = sorted(events.all_events(), key=lambda cls: declared.index(cls.__name__))
    known = {cls.NAME for cls in classes} | {f"{cls.NAME}/{cls.LEVEL}" for cls in classes}
    unknown = set(notes) - known
    if unknown:
        raise PluginError(f"{NOTES}: notes for events that do not exist: {sorted(unknown)}")
    rows = []
    for cls in classes:
        note = notes.get(f"{cls.NAME}/{cls.LEVEL}") or notes.get(cls.NAME, "")
        own_doc = cls.__dict__.get("__doc__") or ""
        if own_doc.startswith(f"{cls.__name__}("):
            own_doc = ""  # (the signature dataclass writes for a class without a docstring)
        meaning = note or " ".join(own_doc.split())
        fields = "<br>".join(_field_text(field) for field in dataclasses.fields(cls))
        rows.append((f"`{cls.NAME}`", cls.LEVEL, fields, meaning))
    lines = [
        *_WIDE,
        "# Log events reference",
        "",
        "Generated from the event classes of `monitor/events.py` when the docs are built. Each",
        "event is one JSON object on one line of stdout, with `event` (the name), `level` and",
        "`timestamp` (ISO 8601, UTC) beside the fields below; a field without a value is left out.",
        "An event declared at two levels has a row for each.",
        "",
        *_table(("event", "level", "fields", "when"), rows),
    ]
    return "\n".join(lines)
