"""S10: SSRF from URL-calling steps (``ctx.http``), against real local HTTP servers.

Three local servers (see ``conftest.Target``): ``public`` stands in for a public host
(it is on 127.0.0.1, so it is allowed explicitly with ``SafeHttp(allow=[...])`` exactly as
an operator allows an internal service), and ``internal`` (127.0.0.1) and ``internal6``
([::1]) are internal services that must never be reached. Each counts accepted
connections and bytes sent, so "refused" means the blocked server saw no connection at
all, not merely that the client raised.

The only stand-ins are the resolvers handed to ``SafeHttp`` for the DNS-rebinding cases;
everything else is real sockets. The same checks then run through a real worker
(``fetch`` in ``tests/security/app.py``): the job fails without retries with error type
``UnsafeRequestError``.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conveyor.errors import TaskFailure, UnsafeRequestError
from conveyor.worker.http import SafeHttp
from tests.security.conftest import (
    API,
    HTTP_MAX_BYTES,
    Targets,
    client,
    figure,
    new_user,
    wait_job,
)
from tests.servers import Server

Resolver = Callable[[str, int], Awaitable[list[str]]]


def redirect(targets: Targets, to: str, status: int = 302) -> str:
    query = urllib.parse.urlencode({"to": to, "status": status})
    return targets.public.url(f"/redirect?{query}")


def direct_urls(targets: Targets) -> dict[str, str]:
    p4, p6 = targets.internal.port, targets.internal6.port
    return {
        "loopback": f"http://127.0.0.1:{p4}/admin",
        "localhost": f"http://localhost:{p4}/admin",
        "metadata 169.254.169.254": "http://169.254.169.254/latest/meta-data/iam/",
        "IPv4-mapped IPv6 [::ffff:127.0.0.1]": f"http://[::ffff:127.0.0.1]:{p4}/admin",
        "IPv4-mapped IPv6, hex form": f"http://[::ffff:7f00:1]:{p4}/admin",
        "decimal 2130706433": f"http://2130706433:{p4}/admin",
        "octal 0177.0.0.1": f"http://0177.0.0.1:{p4}/admin",
        "hex 0x7f.0.0.1": f"http://0x7f.0.0.1:{p4}/admin",
        "short 127.1": f"http://127.1:{p4}/admin",
        "unspecified 0.0.0.0": f"http://0.0.0.0:{p4}/admin",
        "IPv6 loopback [::1]": f"http://[::1]:{p6}/admin",
        "IPv6 unspecified [::]": f"http://[::]:{p6}/admin",
        "private 10/8": "http://10.0.0.1/",
        "private 192.168/16": "http://192.168.0.1/",
        "private 172.16/12": "http://172.16.0.1/",
        "shared 100.64/10": "http://100.64.0.1/",
        "link-local IPv6": "http://[fe80::1]/",
        "unique-local IPv6": "http://[fd00::1]/",
        "userinfo trick public@loopback": f"http://{targets.public.authority}@127.0.0.1:{p4}/",
    }


def scheme_urls(targets: Targets) -> dict[str, str]:
    p4 = targets.internal.port
    return {
        "file": "file:///etc/passwd",
        "ftp": f"ftp://127.0.0.1:{p4}/",
        "gopher": f"gopher://127.0.0.1:{p4}/_GET%20/",
        "dict": f"dict://127.0.0.1:{p4}/info",
        "data": "data:text/plain,hello",
        "ws": f"ws://127.0.0.1:{p4}/",
        "scheme-less": f"//127.0.0.1:{p4}/",
    }


def redirect_urls(targets: Targets) -> dict[str, str]:
    p4, p6 = targets.internal.port, targets.internal6.port
    return {
        "302 to loopback": redirect(targets, f"http://127.0.0.1:{p4}/admin"),
        "301 to loopback": redirect(targets, f"http://127.0.0.1:{p4}/admin", 301),
        "303 to localhost": redirect(targets, f"http://localhost:{p4}/admin", 303),
        "307 to [::ffff:127.0.0.1]": redirect(targets, f"http://[::ffff:127.0.0.1]:{p4}/", 307),
        "308 to [::1]": redirect(targets, f"http://[::1]:{p6}/admin", 308),
        "302 to decimal loopback": redirect(targets, f"http://2130706433:{p4}/"),
        "302 to the metadata service": redirect(targets, "http://169.254.169.254/latest/"),
        "302 to file://": redirect(targets, "file:///etc/passwd"),
        "302 to gopher://": redirect(targets, f"gopher://127.0.0.1:{p4}/_x"),
        "302 to a redirect to loopback": redirect(
            targets, redirect(targets, f"http://127.0.0.1:{p4}/admin")
        ),
    }


async def refused(http: SafeHttp, url: str) -> str | None:
    """None when ``url`` was refused as unsafe, else what happened instead."""
    try:
        response = await http.get(url)
    except UnsafeRequestError:
        return None
    except TaskFailure as exc:
        return f"not refused as unsafe: {type(exc).__name__}: {exc}"
    return f"fetched: {response.status_code} {response.content[:60]!r}"


async def run_refusals(http: SafeHttp, urls: dict[str, str]) -> dict[str, str]:
    return {name: why for name, url in urls.items() if (why := await refused(http, url))}


async def test_direct_internal_addresses_are_refused(targets: Targets) -> None:
    urls = {**direct_urls(targets), **scheme_urls(targets)}
    before = targets.blocked_traffic()
    http = SafeHttp(allow=[targets.public.authority], timeout_s=3)
    try:
        # the control: the allowed "public" target is reachable through the same client
        ok = await http.get(targets.public.url("/ok"))
        assert ok.status_code == 200 and ok.text == "public says hello"
        failures = await run_refusals(http, urls)
    finally:
        await http.close()
    connections, sent = (a - b for a, b in zip(targets.blocked_traffic(), before, strict=True))
    figure(
        "S10",
        f"direct: blocked {len(urls) - len(failures)}/{len(urls)} (loopback, localhost, "
        f"169.254.169.254, mapped/decimal/octal/hex/short IPv4, [::1], private ranges, 7 "
        f"non-http schemes); connections to blocked targets {connections}, bytes read {sent}",
    )
    assert not failures, failures
    assert (connections, sent) == (0, 0)


async def test_a_redirect_to_an_internal_address_is_refused_at_the_redirect(
    targets: Targets,
) -> None:
    urls = redirect_urls(targets)
    public_before = len(targets.public.requests)
    before = targets.blocked_traffic()
    http = SafeHttp(allow=[targets.public.authority], timeout_s=3)
    try:
        # the control: a redirect within the allowed host is followed
        followed = await http.get(redirect(targets, targets.public.url("/ok")))
        assert (followed.status_code, followed.text) == (200, "public says hello")
        failures = await run_refusals(http, urls)
        loop = await refused(http, targets.public.url("/loop"))
    finally:
        await http.close()
    connections, sent = (a - b for a, b in zip(targets.blocked_traffic(), before, strict=True))
    hops = len(targets.public.requests) - public_before
    figure(
        "S10",
        f"redirects: blocked {len(urls) - len(failures)}/{len(urls)} (301/302/303/307/308 to "
        f"loopback, [::1], mapped, decimal, metadata, file, gopher, chained); connections "
        f"to blocked targets {connections}, bytes read {sent}; public hops served {hops}",
    )
    assert not failures, failures
    assert loop is None, f"an endless redirect loop was not cut: {loop}"
    assert (connections, sent) == (0, 0)


def fixed(*answers: list[str]) -> tuple[Resolver, list[str]]:
    """A resolver giving ``answers[i]`` on its i-th call (the last one after that), and
    the list of names it was asked for."""
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return answers[min(len(asked), len(answers)) - 1]

    return resolve, asked


async def test_dns_rebinding_is_refused(targets: Targets) -> None:
    port = targets.internal.port
    cases = {
        "public then private": ["93.184.216.34", "127.0.0.1"],
        "private then public": ["127.0.0.1", "93.184.216.34"],
        "public and IPv6 loopback": ["2606:4700::1111", "::1"],
        "public and mapped loopback": ["93.184.216.34", "::ffff:127.0.0.1"],
        "only private": ["10.1.2.3"],
        "metadata": ["169.254.169.254"],
    }
    before = targets.blocked_traffic()
    failures: dict[str, str] = {}
    for name, answer in cases.items():
        resolver, asked = fixed(answer)
        http = SafeHttp(allow=[targets.public.authority], resolver=resolver, timeout_s=3)
        try:
            why = await refused(http, f"http://rebind.example:{port}/admin")
        finally:
            await http.close()
        if why is not None:
            failures[name] = why
        assert asked == ["rebind.example"], asked

    # time of check = time of use: a name that answers an allowed address first and an
    # internal one afterwards is connected to the address that was checked, once
    resolver, asked = fixed(["127.0.0.1"], ["127.0.0.2"], ["127.0.0.2"])
    http = SafeHttp(allow=[targets.public.authority], resolver=resolver, timeout_s=3)
    try:
        response = await http.get(f"http://rebind.example:{targets.public.port}/host")
    finally:
        await http.close()
    connections, sent = (a - b for a, b in zip(targets.blocked_traffic(), before, strict=True))
    figure(
        "S10",
        f"DNS rebinding: blocked {len(cases) - len(failures)}/{len(cases)} mixed or private "
        f"answers; resolutions per request 1; connections to blocked targets {connections}, "
        f"bytes read {sent}",
    )
    assert not failures, failures
    assert (connections, sent) == (0, 0)
    assert asked == ["rebind.example"], f"resolved more than once: {asked}"
    # connected to the checked address, with the original Host header
    assert response.text == f"rebind.example:{targets.public.port}", response.text


async def test_responses_are_capped_in_size_and_time(targets: Targets) -> None:
    http = SafeHttp(allow=[targets.public.authority], max_bytes=1024, timeout_s=1.0)
    outcomes: dict[str, str] = {}
    try:
        exact = await http.get(targets.public.url("/size?n=1024"))
        assert len(exact.content) == 1024
        for name, path in (("1025 bytes", "/size?n=1025"), ("endless", "/endless")):
            sent_before = targets.public.bytes_sent
            started = time.monotonic()
            with pytest.raises(TaskFailure) as caught:
                await http.get(targets.public.url(path))
            assert not isinstance(caught.value, UnsafeRequestError)
            assert "larger than 1024 bytes" in str(caught.value), caught.value
            outcomes[name] = (
                f"{time.monotonic() - started:.2f}s, server wrote "
                f"{targets.public.bytes_sent - sent_before} bytes"
            )
        started = time.monotonic()
        with pytest.raises(TaskFailure) as late:
            await http.get(targets.public.url("/slow?s=4"))
        outcomes["slow"] = f"{time.monotonic() - started:.2f}s"
        assert "in time" in str(late.value), late.value
        assert time.monotonic() - started < 3.5
    finally:
        await http.close()
    figure("S10", f"size cap 1024 B and timeout 1 s: {outcomes}")


# -- through a worker ------------------------------------------------------------------------


def submit_fetch(server: Server, token: str, url: str) -> str:
    with client(server, token) as http:
        response = http.post(f"{API}/jobs", json={"task": "fetch", "input": {"url": url}})
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
    return job_id


def test_ctx_http_in_a_worker_refuses_without_retrying(
    app_sqlite: Server, targets: Targets
) -> None:
    app_server = app_sqlite
    _, token = new_user(app_server)
    p4 = targets.internal.port
    unsafe = {
        "loopback": f"http://127.0.0.1:{p4}/admin",
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "mapped": f"http://[::ffff:127.0.0.1]:{p4}/admin",
        "decimal": f"http://2130706433:{p4}/admin",
        "[::1]": f"http://[::1]:{targets.internal6.port}/",
        "file": "file:///etc/passwd",
        "redirect to loopback": redirect(targets, f"http://127.0.0.1:{p4}/admin"),
    }
    before = targets.blocked_traffic()
    control = submit_fetch(app_server, token, targets.public.url("/ok"))
    too_big = submit_fetch(app_server, token, targets.public.url(f"/size?n={HTTP_MAX_BYTES + 1}"))
    jobs = {name: submit_fetch(app_server, token, url) for name, url in unsafe.items()}
    results: dict[str, dict[str, Any]] = {}
    with client(app_server, token) as http:
        done = wait_job(http, control, ("completed", "failed"))
        assert done["status"] == "completed", done
        assert done["result"] == {"status": 200, "bytes": len(b"public says hello")}
        for name, job_id in jobs.items():
            results[name] = wait_job(http, job_id, ("completed", "failed"))
        big = wait_job(http, too_big, ("completed", "failed"))
    connections, sent = (a - b for a, b in zip(targets.blocked_traffic(), before, strict=True))
    wrong = {
        name: (job["status"], job["attempts"], (job.get("error") or {}).get("type"))
        for name, job in results.items()
        if (job["status"], job["attempts"], (job.get("error") or {}).get("type"))
        != ("failed", 1, "UnsafeRequestError")
    }
    figure(
        "S10",
        f"worker ctx.http: unsafe jobs failed non-retryably as UnsafeRequestError "
        f"{len(unsafe) - len(wrong)}/{len(unsafe)}; connections to blocked targets "
        f"{connections}, bytes read {sent}; oversized response -> {big['status']} after "
        f"{big['attempts']} attempts ({(big.get('error') or {}).get('type')})",
    )
    assert not wrong, f"(status, attempts, error type) per job: {wrong}"
    assert (connections, sent) == (0, 0)
    # an oversized answer is an ordinary (retryable) failure, not a refusal
    assert big["status"] == "failed" and big["error"]["type"] == "TaskFailure", big
    assert big["attempts"] == big["max_attempts"] == 3, big
