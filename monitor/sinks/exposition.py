"""/metrics as concatenation: each promotion's series are rendered when they change and reused
by every scrape, then joined family by family.

At 10,000 promotions a fresh render formats ~100,000 samples per scrape (over a second in
prometheus_client), while between two scrapes only the promotions polled with news change; so,
as kube-state-metrics does, the cache holds one chunk per family per promotion (the text format
needs a family's samples under one HELP/TYPE). This is the only renderer of the promotion series.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, cast, runtime_checkable

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_go_float = cast("Callable[[float], str]", floatToGoString)  # (untyped in prometheus_client)


def escape(value: str) -> str:
    """A label value (or OpenMetrics help text) as prometheus_client escapes it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family's headers, and the chunks of every promotion that has samples in it."""

    name: str  # a counter's without `_total`, as OpenMetrics names the family
    documentation: str
    kind: str  # "counter" or "gauge"
    labelnames: tuple[str, ...]
    # One promotion's lines, each ending in a newline (label values escape theirs).
    chunks: dict[str, bytes] = field(default_factory=dict)

    @property
    def sample_name(self) -> str:
        return f"{self.name}_total" if self.kind == "counter" else self.name

    def render(self, om: bool) -> bytes:
        if om:
            head = f"# HELP {self.name} {escape(self.documentation)}\n# TYPE {self.name} "
        else:  # (text 0.0.4 names a counter's family by its samples and leaves quotes be)
            help_text = self.documentation.replace("\\", r"\\").replace("\n", r"\n")
            head = f"# HELP {self.sample_name} {help_text}\n# TYPE {self.sample_name} "
        return f"{head}{self.kind}\n".encode() + b"".join(self.chunks.values())

    def put(self, promotion_id: str, rows: Iterable[tuple[tuple[str, ...], float]]) -> None:
        """Replace a promotion's samples (label values, value); labels sorted by name, as
        prometheus_client writes them."""
        lines = []
        for values, value in rows:
            labels = sorted(zip(self.labelnames, values, strict=True))
            inner = ",".join(f'{key}="{escape(text)}"' for key, text in labels)
            lines.append(f"{self.sample_name}{{{inner}}} {_go_float(value)}\n")
        if lines:
            self.chunks[promotion_id] = "".join(lines).encode()
        else:
            self.chunks.pop(promotion_id, None)


@runtime_checkable
class Part(Protocol):
    """Families of promotion series, brought up to date before each scrape."""

    def refresh(self) -> Iterable[Family]: ...


class _CounterPoint:
    __slots__ = ("_point",)

    def __init__(self, point: list[float]) -> None:
        self._point = point

    def inc(self, amount: float = 1) -> None:
        self._point[0] += amount  # (never negative: counts and codes are parsed as such)


class _GaugePoint:
    __slots__ = ("_point",)

    def __init__(self, point: list[float]) -> None:
        self._point = point

    def set(self, value: float) -> None:
        self._point[0] = float(value)


class PromotionSeries:
    """A counter or gauge labelled promotion_id then `labels`, its lines rendered again only after
    a labels() call (every change goes through one, so none is missed). Values are plain floats:
    a prometheus_client child costs ~700 bytes, and a promotion has seven or more."""

    kind: ClassVar[str]

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        self._labelnames = ("promotion_id", *labels)
        self.family = Family(
            name.removesuffix("_total"), documentation, self.kind, self._labelnames
        )
        self._points: dict[tuple[str, ...], list[float]] = {}
        self._keys: dict[str, tuple[tuple[str, ...], ...]] = {}  # by promotion, as created
        self._changed: set[str] = set()

    def _point(self, values: tuple[str, ...]) -> list[float]:
        if len(values) != len(self._labelnames):
            raise ValueError("Incorrect label count")
        self._changed.add(values[0])
        point = self._points.get(values)
        if point is None:
            point = self._points[values] = [0.0]
            self._keys[values[0]] = (*self._keys.get(values[0], ()), values)
        return point

    def forget(self, promotion_id: str) -> None:
        for key in self._keys.pop(promotion_id, ()):
            del self._points[key]
        self._changed.add(promotion_id)

    def refresh(self) -> Iterable[Family]:
        for pid in self._changed:
            self.family.put(pid, [(key, self._points[key][0]) for key in self._keys.get(pid, ())])
        self._changed.clear()
        return (self.family,)


class PromotionCounter(PromotionSeries):
    kind = "counter"

    def labels(self, *values: str) -> _CounterPoint:
        return _CounterPoint(self._point(values))


class PromotionGauge(PromotionSeries):
    kind = "gauge"

    def labels(self, *values: str) -> _GaugePoint:
        return _GaugePoint(self._point(values))


class Samples(Collector):
    """Another collector's metrics without their `_created` samples (a timestamp per counter
    that nobody queries), and, given `names`, only the samples so named (`?name[]=`)."""

    def __init__(self, inner: Collector, names: Collection[str] = ()) -> None:
        self._inner = inner
        self._names = names

    def collect(self) -> Iterator[Metric]:
        for metric in self._inner.collect():
            created = f"{metric.name}_created"
            metric.samples = [
                s
                for s in metric.samples
                if s.name != created and (not self._names or s.name in self._names)
            ]
            if metric.samples or not self._names:
                yield metric


class Exposition:
    """/metrics: while `visible`, the promotion parts (cached families, or collectors rendered
    by prometheus_client); always, the process's own metrics."""

    def __init__(
        self, process: Collector, visible: Callable[[], bool], parts: Sequence[Part | Collector]
    ) -> None:
        self._process = process
        self._visible = visible
        self._parts = parts

    def render(self, accept: str, names: Collection[str] = ()) -> tuple[bytes, str]:
        """The whole body and its content type (see stream)."""
        chunks, content_type = self.stream(accept, names)
        return b"".join(chunks), content_type

    def stream(self, accept: str, names: Collection[str] = ()) -> tuple[Iterator[bytes], str]:
        """The body, family by family, and its content type (negotiated as prometheus_client
        does); given `names`, only the samples so named. Streamed: a scrape never holds the whole
        exposition (13 MB at 10,000 promotions) nor a compressed copy of it."""
        encoder, content_type = choose_encoder(accept)
        om = content_type.startswith("application/openmetrics-text")

        def chunks() -> Iterator[bytes]:
            if self._visible():
                for part in self._parts:
                    if not isinstance(part, Part):  # (few series, none per promotion: anew)
                        yield encoder(Samples(part, names)).removesuffix(b"# EOF\n")
                        continue
                    for family in part.refresh():
                        if not names or family.sample_name in names:
                            yield family.render(om)
            yield encoder(Samples(self._process, names))

        return chunks(), content_type
