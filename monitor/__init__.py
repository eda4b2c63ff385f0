"""promo-monitor: Elastic Path promotion code jobs as Prometheus metrics and JSON events."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("promo-monitor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
