"""/metrics as concatenation: each promotion's series are rendered once when they change and
reused by every scrape, then joined family by family.

kube-state-metrics keeps pre-serialised metric families per object for the same reason: at
10,000 promotions a fresh render formats ~150,000 samples per scrape, while between two scrapes
only the promotions that were polled with news (and the per-poll gauges) change. The text format
needs every sample of a family under one HELP/TYPE, so the cache holds one chunk per family per
promotion, in OpenMetrics order: a counter's `_total` line, then its `_created` line. Text 0.0.4
puts `_created` samples in a family of their own; a scrape in that format splits a counter
family's joined lines into alternate ones (C-speed slices), so one chunk serves both formats.

The registry stays the truth (tests and `?name[]=` read it through prometheus_client); this is a
faster path to the same samples, checked against it by tests/test_exposition.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final, Protocol, cast, runtime_checkable

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

_go_float = cast("Callable[[float], str]", floatToGoString)  # (untyped in prometheus_client)

OPENMETRICS: Final = "application/openmetrics-text"
_EOF: Final = b"# EOF\n"

# One promotion's lines of one family, each ending in a newline (label values escape theirs).
Entry = bytes


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

    def render(self, om: bool) -> Iterator[bytes]:
        body = b"".join(self.chunks.values())
        if om:
            yield f"# HELP {self.name} {escape(self.documentation)}\n".encode()
            yield f"# TYPE {self.name} {self.kind}\n".encode()
            yield body
            return
        bodies = [body]
        if self.kind == "counter":
            lines = body.split(b"\n")[:-1]  # _total, _created, _total, _created, ...
            bodies = [b"\n".join(lines[n::2]) + b"\n" if lines else b"" for n in (0, 1)]
        help_text = self.documentation.replace("\\", r"\\").replace("\n", r"\n")
        for n, section in enumerate(self.sections()):
            body = bodies[n]
            if n and not body:
                continue  # (prometheus_client writes a `_created` family only with samples)
            kind = self.kind if n == 0 else "gauge"
            yield f"# HELP {section} {help_text}\n# TYPE {section} {kind}\n".encode()
            yield body


@runtime_checkable
class Part(Protocol):
    """Families of promotion series, brought up to date before each scrape."""

    def refresh(self) -> Iterable[Family]: ...


class _CounterPoint:
    __slots__ = ("_point",)

    def __init__(self, point: list[float]) -> None:
        self._point = point

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self._point[0] += amount


class _GaugePoint:
    __slots__ = ("_point",)

    def __init__(self, point: list[float]) -> None:
        self._point = point

    def set(self, value: float) -> None:
        self._point[0] = float(value)


class PromotionSeries(Collector):
    """A counter or gauge whose first label is promotion_id, kept by promotion so that a
    promotion's lines are rendered again only after a call that may have changed them.

    Every change goes through labels() (`.labels(...).inc()`), so marking the promotion there
    cannot miss one. Values are plain floats rather than prometheus_client children, which
    cost ~700 bytes each, seven or more per promotion.
    """

    kind: ClassVar[str]

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None = None,
    ) -> None:
        if labelnames[0] != "promotion_id":
            raise ValueError("the first label must be promotion_id")
        # (prometheus_client's naming: a counter family drops `_total`, its samples carry it)
        self.family = Family(name.removesuffix("_total"), documentation, self.kind)
        self._labelnames = tuple(labelnames)
        self._points: dict[tuple[str, ...], list[float]] = {}  # [value] or [value, created]
        self._keys: dict[str, tuple[tuple[str, ...], ...]] = {}  # by promotion, as created
        self._changed: set[str] = set()
        if registry is not None:
            registry.register(self)

    def _point(self, values: tuple[str, ...]) -> list[float]:
        if len(values) != len(self._labelnames):
            raise ValueError("Incorrect label count")
        self._changed.add(values[0])
        point = self._points.get(values)
        if point is None:
            point = [0.0, time.time()] if self.family.kind == "counter" else [0.0]
            self._points[values] = point
            self._keys[values[0]] = (*self._keys.get(values[0], ()), values)
        return point

    def forget(self, promotion_id: str) -> None:
        for key in self._keys.pop(promotion_id, ()):
            del self._points[key]
        self._changed.add(promotion_id)

    def describe(self) -> Iterable[Metric]:
        return [self._metric()]

    def collect(self) -> Iterable[Metric]:
        """The uncached truth, rendered by prometheus_client (tests, `?name[]=`)."""
        metric = self._metric()
        for key, point in self._points.items():
            if self.family.kind == "counter":
                cast("CounterMetricFamily", metric).add_metric(key, point[0], created=point[1])
            else:
                cast("GaugeMetricFamily", metric).add_metric(key, point[0])
        return [metric]

    def _metric(self) -> Metric:
        name, doc, labels = self.family.name, self.family.documentation, self._labelnames
        if self.family.kind == "counter":
            return CounterMetricFamily(name, doc, labels=labels)
        return GaugeMetricFamily(name, doc, labels=labels)

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
        keys = self._keys.get(pid)
        if not keys:
            return None
        name = self.family.name
        if self.family.kind != "counter":
            names = self._labelnames
            points = self._points
            gauges = [
                sample_line(name, zip(names, key, strict=True), points[key][0]) for key in keys
            ]
            return "".join(gauges).encode()
        lines: list[str] = []
        for key in keys:
            value, since = self._points[key]
            labels = list(zip(self._labelnames, key, strict=True))
            lines.append(sample_line(f"{name}_total", labels, value))
            lines.append(sample_line(f"{name}_created", labels, since))
        return "".join(lines).encode()


class PromotionCounter(PromotionSeries):
    kind = "counter"

    def labels(self, *values: str) -> _CounterPoint:
        return _CounterPoint(self._point(values))


class PromotionGauge(PromotionSeries):
    kind = "gauge"

    def labels(self, *values: str) -> _GaugePoint:
        return _GaugePoint(self._point(values))


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
        """The whole body and its content type (see stream)."""
        chunks, content_type = self.stream(accept)
        return b"".join(chunks), content_type

    def stream(self, accept: str) -> tuple[Iterator[bytes], str]:
        """The body, family by family, and its content type for an Accept header (negotiated
        as prometheus_client does). Written out as it is made, a scrape never holds the whole
        exposition (18 MB at 10,000 promotions) nor a compressed copy of it."""
        encoder, content_type = choose_encoder(accept)
        om = content_type.startswith(OPENMETRICS)

        def chunks() -> Iterator[bytes]:
            if self._visible():
                for part in self._parts:
                    if not isinstance(part, Part):  # (few series, none per promotion: anew)
                        rendered = encoder(part)
                        yield rendered.removesuffix(_EOF) if om else rendered
                        continue
                    for family in part.refresh():
                        yield b"".join(family.render(om))
            yield encoder(self._process)

        return chunks(), content_type
