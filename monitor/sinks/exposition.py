"""/metrics as concatenation: each promotion's series are rendered once when they change and
reused by every scrape, then joined family by family.

kube-state-metrics keeps pre-serialised metric families per object for the same reason: at
10,000 promotions a fresh render formats ~150,000 samples per scrape, while between two scrapes
only the promotions that were polled with news (and the per-poll gauges) change. The text format
needs every sample of a family under one HELP/TYPE, so the cache holds one chunk per family per
promotion, both exposition formats at once: Prometheus text 0.0.4 splits a counter's `_created`
samples into a family of their own, OpenMetrics keeps them beside each `_total`.

The registry stays the truth (tests and `?name[]=` read it through prometheus_client); this is a
faster path to the same samples, checked against it by tests/test_exposition.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, Protocol, TypeVar, cast, runtime_checkable

from prometheus_client import Counter, Gauge
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_go_float = cast("Callable[[float], str]", floatToGoString)  # (untyped in prometheus_client)

OPENMETRICS: Final = "application/openmetrics-text"
_EOF: Final = b"# EOF\n"

# One promotion's lines of one family: a chunk per text-format section, then the OpenMetrics one.
Entry = tuple[bytes, ...]


def escape(value: str) -> str:
    """A label value (or OpenMetrics help text) as prometheus_client escapes it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def sample_line(name: str, labels: Iterable[tuple[str, str]], value: float) -> str:
    """One sample, labels in name order (as prometheus_client writes them)."""
    inner = ",".join(f'{key}="{escape(text)}"' for key, text in sorted(labels))
    return f"{name}{{{inner}}} {_go_float(value)}\n"


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family's headers, and the chunks of every promotion that has samples in it."""

    name: str
    documentation: str
    kind: str  # "counter" or "gauge"
    chunks: dict[str, Entry] = field(default_factory=dict)

    def sections(self) -> tuple[str, ...]:
        """The text format's family names: a counter's `_created` samples are a gauge apart."""
        if self.kind == "counter":
            return (f"{self.name}_total", f"{self.name}_created")
        return (self.name,)

    def entry(self, text_sections: Sequence[Sequence[str]], openmetrics: Sequence[str]) -> Entry:
        """An Entry from lines; a gauge's two formats share one bytes object."""
        om = "".join(openmetrics).encode()
        if self.kind != "counter":
            return (om, om)
        return (*("".join(lines).encode() for lines in text_sections), om)

    def render(self, om: bool) -> Iterator[bytes]:
        if om:
            yield f"# HELP {self.name} {escape(self.documentation)}\n".encode()
            yield f"# TYPE {self.name} {self.kind}\n".encode()
            yield b"".join([entry[-1] for entry in self.chunks.values()])
            return
        help_text = self.documentation.replace("\\", r"\\").replace("\n", r"\n")
        for n, section in enumerate(self.sections()):
            body = b"".join([entry[n] for entry in self.chunks.values()])
            if n and not body:
                continue  # (prometheus_client writes a `_created` family only with samples)
            kind = self.kind if n == 0 else "gauge"
            yield f"# HELP {section} {help_text}\n# TYPE {section} {kind}\n".encode()
            yield body


@runtime_checkable
class Part(Protocol):
    """Families of promotion series, brought up to date before each scrape."""

    def refresh(self) -> Iterable[Family]: ...


M = TypeVar("M", Counter, Gauge)


class PromotionMetric(Generic[M]):
    """A prometheus_client counter or gauge whose first label is promotion_id, which tells its
    exposition which promotion's series a call may have changed.

    Every change goes through labels() (`.labels(...).inc()`), so marking the promotion there
    cannot miss one; marking one that did not change only costs a re-render.
    """

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        described: Metric = next(iter(metric.describe()))
        self.family = Family(described.name, described.documentation, described.type)
        self._labelnames: tuple[str, ...] = metric._labelnames
        self._by_promotion: dict[str, dict[tuple[str, ...], None]] = {}
        self._changed: set[str] = set()

    def labels(self, *values: str) -> M:
        self._by_promotion.setdefault(values[0], {})[values] = None
        self._changed.add(values[0])
        return self.metric.labels(*values)

    def remove(self, *values: str) -> None:
        self.metric.remove(*values)
        keys = self._by_promotion.get(values[0], {})
        keys.pop(values, None)
        if not keys:
            self._by_promotion.pop(values[0], None)
        self._changed.add(values[0])

    def keys(self) -> list[tuple[str, ...]]:
        return [key for keys in self._by_promotion.values() for key in keys]

    def refresh(self) -> Iterable[Family]:
        chunks = self.family.chunks
        for pid in self._changed:
            entry = self._entry(pid)
            if entry is None:
                chunks.pop(pid, None)
            else:
                chunks[pid] = entry
        self._changed.clear()
        return (self.family,)

    def _entry(self, pid: str) -> Entry | None:
        keys = self._by_promotion.get(pid)
        if not keys:
            return None
        totals: list[str] = []
        created: list[str] = []
        both: list[str] = []
        # prometheus_client keeps children by label tuple and their samples behind _samples();
        # reading them per promotion is what makes a render cost the promotion, not all of them.
        children = self.metric._metrics
        for key in keys:
            child = children.get(key)
            if child is None:
                continue
            labels = list(zip(self._labelnames, key, strict=True))
            for sample in child._samples():
                line = sample_line(
                    self.family.name + sample.name,
                    labels + list(sample.labels.items()),
                    sample.value,
                )
                (created if sample.name == "_created" else totals).append(line)
                both.append(line)
        return self.family.entry((totals, created), both)


class Exposition:
    """/metrics from cached promotion chunks, then the process metrics as prometheus_client
    renders them."""

    def __init__(
        self,
        process: Collector,
        visible: Callable[[], bool],
        parts: Sequence[Part | Collector],
    ) -> None:
        self._process = process
        self._visible = visible
        self._parts = parts

    def render(self, accept: str) -> tuple[bytes, str]:
        """The body and its content type for an Accept header (negotiated as prometheus_client
        does)."""
        encoder, content_type = choose_encoder(accept)
        om = content_type.startswith(OPENMETRICS)
        chunks: list[bytes] = []
        if self._visible():
            for part in self._parts:
                if not isinstance(part, Part):  # (few series, none per promotion: rendered anew)
                    rendered = encoder(part)
                    chunks.append(rendered.removesuffix(_EOF) if om else rendered)
                    continue
                for family in part.refresh():
                    chunks.extend(family.render(om))
        chunks.append(encoder(self._process))
        return b"".join(chunks), content_type
