"""The Elastic Path HTTP client.

`transport` (`budget` → request → classify → retry) ◄─ `tokens` (client_credentials or a token
file) and `pager` (offsets by records received) ◄─ `api` (jobs, promotion lists, one promotion).
The client holds no domain state.
"""

from monitor.client.api import ElasticPathClient, FetchResult
from monitor.client.endpoints import JobsTarget
from monitor.client.errors import REASONS, ApiError, Reason, parse_retry_after
from monitor.client.pager import UNREACHABLE, Incomplete
from monitor.client.transport import ClientEvents

__all__ = [
    "REASONS",
    "UNREACHABLE",
    "ApiError",
    "ClientEvents",
    "ElasticPathClient",
    "FetchResult",
    "Incomplete",
    "JobsTarget",
    "Reason",
    "parse_retry_after",
]
