"""The Simulator: a store served over HTTP, with its tokens, faults and request record.

Tests, the demo and the benchmarks use this one object. Its data and lifecycle methods are the
store's own (it is a Store: forwarding them would restate every signature); the token, fault
and route settings live in their parts and are reached here under their old names.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast, overload

from aiohttp import web

from monitor.simulator.faults import Fault, Faults
from monitor.simulator.rendering import ResultKey
from monitor.simulator.routes import RecordedRequest, Routes, RuleListShape
from monitor.simulator.store import Store
from monitor.simulator.tokens import Tokens, TokenShape

_T = TypeVar("_T")


class _PartAttribute(Generic[_T]):
    """An attribute of one of the simulator's parts, read and set as if it were the simulator's."""

    def __init__(self, part: str) -> None:
        self._part = part
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, simulator: None, owner: type) -> _PartAttribute[_T]: ...
    @overload
    def __get__(self, simulator: object, owner: type) -> _T: ...
    def __get__(self, simulator: object, owner: type) -> Any:
        if simulator is None:
            return self
        return cast(_T, getattr(getattr(simulator, self._part), self._name))

    def __set__(self, simulator: object, value: _T) -> None:
        setattr(getattr(simulator, self._part), self._name, value)


class Simulator(Store):
    """A fake Elastic Path store serving the promotion job endpoints over aiohttp."""

    client_id = _PartAttribute[str]("tokens")
    client_secret = _PartAttribute[str]("tokens")
    token_ttl = _PartAttribute[float]("tokens")
    token_shape = _PartAttribute[TokenShape]("tokens")
    tokens_issued = _PartAttribute[int]("tokens")
    requests = _PartAttribute[list[RecordedRequest]]("routes")
    page_cap = _PartAttribute[int | None]("routes")
    ignore_offset = _PartAttribute[bool]("routes")
    unordered = _PartAttribute[bool]("routes")
    unpaged = _PartAttribute[bool]("routes")
    rule_list_shape = _PartAttribute[RuleListShape]("routes")

    def __init__(
        self,
        *,
        client_id: str = "demo-client-id",
        client_secret: str = "demo-client-secret",  # noqa: S107 -- public demo credentials
        token_ttl: float = 3600.0,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
        page_cap: int | None = None,
        ignore_offset: bool = False,
        unordered: bool = False,
        unpaged: bool = False,
        result_key: ResultKey = "result",
        rule_list_shape: RuleListShape = "envelope",
        token_shape: TokenShape = "flat",  # noqa: S107 -- an answer shape, not a password
    ) -> None:
        super().__init__(clock=clock, seed=seed, result_key=result_key)
        self.tokens = Tokens(
            client_id=client_id,
            client_secret=client_secret,
            token_ttl=token_ttl,
            token_shape=token_shape,
            clock=clock,
        )
        self.faults = Faults()
        self.routes = Routes(
            self,
            self.tokens,
            self.faults,
            seed=seed,
            page_cap=page_cap,
            ignore_offset=ignore_offset,
            unordered=unordered,
            unpaged=unpaged,
            rule_list_shape=rule_list_shape,
        )
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    @property
    def app(self) -> web.Application:
        return self.routes.app

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("simulator not started")
        return self._base_url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0 picks a free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        # handler_cancellation stops a hanging fault as soon as the client gives up; the short
        # shutdown timeout keeps stop() fast while a huge body is still streaming.
        runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self._runner = runner
        self._base_url = f"http://{shown}:{bound_port}"
        return self._base_url

    async def stop(self) -> None:
        """Stop serving (for good); requests held by slow or timeout faults are answered first."""
        self.faults.release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def inject(self, fault: Fault) -> None:
        self.faults.inject(fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    def revoke_tokens(self) -> None:
        self.tokens.revoke()

    def issued_tokens(self) -> list[str]:
        """Every access token handed out so far, revoked or not."""
        return self.tokens.issued()
