"""R11: a worker partitioned from PostgreSQL (PostgreSQL only: SQLite has no network).

The cut worker reaches PostgreSQL through :mod:`tests.faults.proxy`, the other one
directly (see :mod:`tests.faults.partition` for the episodes):

* black hole: the proxy is SIGSTOPped for 2 x TTL mid-step. The cut worker must fence
  itself before the database lets its leases go, none of its late writes may change
  anything, the direct worker completes every job, no database call of the cut worker
  may hang past its client-side deadline, and it works again once the proxy resumes;
* reset: every proxied connection is reset mid-step (zero-linger close): the cut worker
  reconnects without losing its leases and its LISTEN comes back;
* latency: +200 ms per round trip on the cut worker's connections: jobs still complete.
"""

from __future__ import annotations

import pytest

from conveyor.engine.core import Engine
from tests.conftest import reset_pg
from tests.faults import oracle
from tests.faults.harness import LEASE_TTL_S, ClientLog, Fleet, report
from tests.faults.partition import (
    DEADLINE_S,
    blackhole_episode,
    latency_episode,
    reset_episode,
    start_pair,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def db_url(request: pytest.FixtureRequest) -> str:
    """PostgreSQL only (overrides the two-backend fixture of tests/conftest.py)."""
    url: str = request.getfixturevalue("pg_url")
    reset_pg(url)
    return url


async def test_r11_black_hole_partition(
    db_url: str, fengine: Engine, fleet: Fleet, client_log: ClientLog
) -> None:
    pair = await start_pair(fleet, fengine)
    fig = await blackhole_episode(fleet, fengine, client_log, pair, pause_s=2 * LEASE_TTL_S)
    found = oracle.check(db_url, client_log.accepted_ids(), fleet.ledger)
    found.assert_ok(fleet.diagnostics())
    ids = fig["ids"]
    takeover = list(fig["takeover_s"].values())
    report(
        "R11-blackhole",
        "postgres",
        f"proxy paused {fig['partition_s']:.1f}s (TTL {LEASE_TTL_S}s): takeover after "
        f"{sorted(takeover)}s; self-fenced {len(fig['self_fenced'])} attempts "
        f"{sorted(fig['self_fence_after_s'].values())}s after the cut, margin to the DB "
        f"lease expiry {fig['fence_margin_s']}s; stale writes rejected "
        f"{fig['stale_writes_rejected']}/{fig['stale_writes_attempted']} (+ "
        f"{fig['refused_by_db']} refused from the worker itself); longest DB call "
        f"{fig['longest_db_call_s']}s (deadline {DEADLINE_S}s); back "
        f"{fig['cut_back_after_heal_s']}s after healing; effective duplicates "
        f"{found.duplicates}",
        **{k: v for k, v in fig.items() if k != "ids"},
        **found.figures(),
    )
    assert fig["job_statuses"] == ["completed"] * 3
    assert {ids["long"], ids["thread"]} <= set(fig["self_fenced"]), fig
    assert all(m > 0 for m in fig["fence_margin_s"]), "fenced after the DB freed the lease"
    assert fig["taken_over"] == (2 if fig["finished_before_partition"] else 3), fig
    assert fig["stale_writes_rejected"] == fig["stale_writes_attempted"]
    assert fig["stale_event_writes"] == 0 and fig["stale_successes"] == 0
    assert fig["longest_db_call_s"] <= DEADLINE_S + 0.5, fig
    assert found.duplicates == 0


async def test_r11_connection_resets(
    db_url: str, fengine: Engine, fleet: Fleet, client_log: ClientLog
) -> None:
    # polling slowed to 5 s: quick pickups after the resets mean LISTEN came back
    pair = await start_pair(fleet, fengine, cut_settings={"CONVEYOR_POLL_MAX_S": "5"})
    fig = await reset_episode(fleet, fengine, client_log, pair)
    found = oracle.check(db_url, client_log.accepted_ids(), fleet.ledger)
    found.assert_ok(fleet.diagnostics())
    report(
        "R11-reset",
        "postgres",
        f"{fig['resets']} resets of every proxied connection mid-step: lease expiries "
        f"{fig['lease_expired_events']}, attempts {fig['attempts']}, self-fenced "
        f"{fig['self_fenced']}; LISTEN reconnects logged {fig['listen_reconnects_logged']}; "
        f"notify-driven pickups afterwards {fig['notify_pickup_s']}s (polling at 5 s); "
        f"effective duplicates {found.duplicates}",
        **fig,
        **found.figures(),
    )
    assert fig["job_statuses"] == ["completed"] * 3
    assert fig["lease_expired_events"] == 0 and fig["self_fenced"] == 0, fig
    assert fig["listen_reconnects_logged"] >= 1
    assert max(fig["notify_pickup_s"]) < 2.0, fig
    assert found.duplicates == 0


async def test_r11_added_latency(
    db_url: str, fengine: Engine, fleet: Fleet, client_log: ClientLog
) -> None:
    # 200 ms per round trip makes one claim transaction take over a second: leases and
    # deadlines sized for a slow link (the FAST 2 s lease would fence every claim)
    slow_link = {
        "CONVEYOR_LEASE_TTL_S": "10",
        "CONVEYOR_HEARTBEAT_INTERVAL_S": "1",
        "CONVEYOR_DB_CALL_DEADLINE_S": "8",
    }
    pair = await start_pair(fleet, fengine, latency_ms=200, settings=slow_link)
    fig = await latency_episode(fleet, fengine, client_log, pair)
    found = oracle.check(db_url, client_log.accepted_ids(), fleet.ledger)
    found.assert_ok(fleet.diagnostics())
    report(
        "R11-latency",
        "postgres",
        f"+200 ms per round trip on the cut worker: {fig['jobs']} jobs done in "
        f"{fig['all_done_s']}s, starts by worker {fig['starts_by_worker']}, lease expiries "
        f"{fig['lease_expired_events']}, self-fenced {fig['self_fenced']}; SELECT 1 through "
        f"the proxy {fig['probe_select1_s']}; effective duplicates {found.duplicates}",
        **fig,
        **found.figures(),
    )
    assert fig["job_statuses"] == ["completed"]
    assert fig["starts_by_worker"]["cut"] >= len(range(0, fig["jobs"], 3))
    assert fig["lease_expired_events"] == 0 and fig["self_fenced"] == 0, fig
    assert found.duplicates == 0
