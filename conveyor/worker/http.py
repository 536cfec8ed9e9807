"""``ctx.http``: outbound HTTP for task code that cannot be turned against the inside.

Agents fetch URLs they were given by users or by models; a URL naming
``169.254.169.254`` or ``127.0.0.1`` (or a public name resolving there, or redirecting
there) must not reach internal services. Every request and every redirect hop is
checked the same way: only ``http``/``https``; the host is resolved once and **every**
address must be globally routable (IPv4-mapped IPv6, decimal and octal spellings are
normalised by the resolver first); the connection then goes to the checked address,
keeping the original ``Host`` and TLS server name, so a second DNS answer cannot differ
(no rebinding). Responses are capped in size and time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx

from conveyor.errors import TaskFailure, UnsafeRequestError

Resolver = Callable[[str, int], Awaitable[list[str]]]
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status_code: int
    headers: dict[str, str]
    content: bytes
    url: str

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        import json

        return json.loads(self.content)


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class _CheckedTransport(httpx.AsyncBaseTransport):
    def __init__(self, resolver: Resolver, allow: frozenset[str]) -> None:
        self._resolver = resolver
        self._allow = allow
        self._inner = httpx.AsyncHTTPTransport(retries=0)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise UnsafeRequestError(f"only http and https URLs may be fetched: {url}")
        host = url.host
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = await self._resolver(host, port)
        except OSError as exc:
            raise TaskFailure(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise TaskFailure(f"{host} has no address")
        for address in addresses:
            if f"{address}:{port}" not in self._allow and not is_public(address):
                raise UnsafeRequestError(
                    f"{host} resolves to {address}, which is not a public address"
                )
        target = addresses[0]
        request.url = url.copy_with(host=target)
        request.extensions = {**request.extensions, "sni_hostname": host}
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class SafeHttp:
    """An HTTP client for task code: ``await ctx.http.get(url)``."""

    def __init__(
        self,
        *,
        allow: Iterable[str] = (),
        resolver: Resolver | None = None,
        timeout_s: float = 30.0,
        max_bytes: int = 10 * 1_048_576,
        max_redirects: int = 5,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self._client = httpx.AsyncClient(
            transport=_CheckedTransport(resolver or system_resolver, frozenset(allow)),
            timeout=timeout_s,
            follow_redirects=False,
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def get(self, url: str, **kwargs: Any) -> HttpResponse:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> HttpResponse:
        return await self.request("POST", url, **kwargs)

    async def request(self, method: str, url: str, **kwargs: Any) -> HttpResponse:
        """Send a request; redirects are followed one checked hop at a time."""
        current = url
        for _ in range(self.max_redirects + 1):
            try:
                async with self._client.stream(method, current, **kwargs) as response:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        current = str(response.url.join(response.headers["location"]))
                        if response.status_code == 303 or (
                            response.status_code in (301, 302) and method == "POST"
                        ):
                            method, kwargs = (
                                "GET",
                                {
                                    k: v
                                    for k, v in kwargs.items()
                                    if k not in ("json", "data", "content")
                                },
                            )
                        continue
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > self.max_bytes:
                            raise TaskFailure(
                                f"the response from {current} is larger than {self.max_bytes} bytes"
                            )
                    return HttpResponse(
                        response.status_code, dict(response.headers), bytes(body), current
                    )
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
                raise UnsafeRequestError(f"refused URL {current!r}: {exc}") from exc
            except httpx.TimeoutException as exc:
                raise TaskFailure(f"{current} did not answer in time") from exc
            except httpx.TransportError as exc:
                raise TaskFailure(f"cannot reach {current}: {exc}") from exc
        raise UnsafeRequestError(f"more than {self.max_redirects} redirects from {url}")
