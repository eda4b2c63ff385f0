"""The Elastic Path HTTP client.

`transport` (`budget` → request → classify → retry) ◄─ `tokens` (client_credentials or a token
file) and `pager` (offsets by records received) ◄─ `api` (jobs, promotion lists, one promotion).
The client holds no domain state.
"""

from monitor.client.api import ElasticPathClient, FetchResult
from monitor.client.endpoints import JOBS_ENDPOINT, JobsTarget
from monitor.client.errors import REASONS, ApiError, Reason, parse_retry_after
from monitor.client.pager import MAX_OFFSET, UNREACHABLE, Incomplete, Listing
from monitor.client.tokens import ClientCredentials, StaticTokenFile, TokenSource
from monitor.client.transport import MAX_BODY_BYTES, ClientEvents, NoEvents

__all__ = [
    "JOBS_ENDPOINT",
    "MAX_BODY_BYTES",
    "MAX_OFFSET",
    "REASONS",
    "UNREACHABLE",
    "ApiError",
    "ClientCredentials",
    "ClientEvents",
    "ElasticPathClient",
    "FetchResult",
    "Incomplete",
    "JobsTarget",
    "Listing",
    "NoEvents",
    "Reason",
    "StaticTokenFile",
    "TokenSource",
    "parse_retry_after",
]
