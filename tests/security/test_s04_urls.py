"""S4: credentials in URLs never reach the access log.

tests/api/test_auth.py checks that a JWT in ``?token=`` (and four other names) is refused
and not logged on JSON routes; tests/streams/test_sse.py that a JWT in a URL never opens
an SSE stream and that stream tickets are single-use, scoped and short-lived. Missing:
the legitimate URL credential itself — the stream ticket — must not be logged either
(whoever reads the log within its minute could replay it), nor a JWT sent by mistake on
an SSE route.
"""

from __future__ import annotations

import time

from tests.security.conftest import API, SSE, client, figure, new_user, sse_transcript
from tests.servers import Server


def test_stream_tickets_and_tokens_in_stream_urls_are_not_logged(hardened_sqlite: Server) -> None:
    server = hardened_sqlite
    _, token = new_user(server)
    with client(server, token) as http:
        job = http.post(f"{API}/jobs", json={"task": "echo", "input": {}}).json()["id"]
        issued = http.post(f"{API}/stream-tickets", json={"scope": f"job:{job}"})
        assert issued.status_code == 201, issued.text
        ticket = issued.json()["ticket"]
    path = f"{API}/jobs/{job}/events"
    # the ticket opens the stream (it ends at the server's 2 s lifetime cap: no workers)
    transcript = sse_transcript(server, None, f"{path}?ticket={ticket}")
    assert "job.queued" in transcript
    with client(server) as anonymous:
        for name in ("token", "access_token", "ticket"):
            refused = anonymous.get(path, params={name: token}, headers=SSE)
            assert refused.status_code in (401, 422), refused.text
        used_again = anonymous.get(path, params={"ticket": ticket}, headers=SSE)
        assert used_again.status_code == 401, used_again.text
    deadline = time.monotonic() + 5
    while server.log.read_text().count(f"GET {path}?") < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log.read_text(errors="replace")
    logged = log.count(f"GET {path}?")
    leaked = [line for line in log.splitlines() if ticket in line or token in line]
    figure(
        "S4",
        f"stream URLs with a ticket or a JWT logged {logged}x; secrets in the access log "
        f"{len(leaked)}",
    )
    assert logged >= 5, "the stream requests were not logged"
    assert not leaked, leaked
