"""The Elastic Path HTTP client.

`transport` (`budget` → request → classify → retry) ◄─ `tokens` (client_credentials or a token
file) and `pager` (offsets by records received) ◄─ `api` (jobs, promotion lists, one promotion).
The client holds no domain state.
"""

from monitor.client.api import ElasticPathClient as ElasticPathClient
from monitor.client.api import FetchResult as FetchResult
from monitor.client.endpoints import JobsTarget as JobsTarget
from monitor.client.errors import REASONS as REASONS
from monitor.client.errors import ApiError as ApiError
from monitor.client.errors import Reason as Reason
from monitor.client.errors import parse_retry_after as parse_retry_after
from monitor.client.pager import UNREACHABLE as UNREACHABLE
from monitor.client.pager import Incomplete as Incomplete
from monitor.client.transport import ClientEvents as ClientEvents
