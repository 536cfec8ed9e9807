"""Screenshots of the dashboard for the README: ``python -m tests.dashboard.screenshots``.

Serves the examples app (``examples.app:app``) on a throw-away SQLite database with an
extra worker process, runs the research and data pipelines a few times through the API,
then photographs the main pages with Debian's Chromium into ``docs/img/``.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from tests.acceptance.conftest import CONVEYOR_BIN, process_env
from tests.api.conftest import ROOT
from tests.dashboard.conftest import (
    API,
    CHROMIUM,
    CHROMIUM_ARGS,
    api_start,
    api_wait,
    start_dashboard_server,
)
from tests.servers import ADMIN_PASSWORD, Server, stop_server

OUT = Path(__file__).resolve().parents[2] / "docs" / "img"
QUESTIONS = [
    ("How do agents use tools safely?", "tool use", "expert"),
    ("How do agents use tools safely?", "prompt injection", "expert"),
    ("What makes durable AI workflows reliable?", "crash recovery", "general"),
    ("How can inference costs of agents be cut?", "model routing", "general"),
]


def populate(server: Server) -> dict[str, str]:
    """Runs worth looking at; returns the ids the screenshots need."""
    token = server.admin_token
    ids: dict[str, str] = {}
    for question, focus, audience in QUESTIONS:
        started = api_start(
            server, token, "research", {"question": question, "focus": focus, "audience": audience}
        )
        api_wait(server, token, started["id"])
        ids["research"] = started["id"]
    for count in (100, 1000):
        started = api_start(server, token, "data_pipeline", {"count": count})
        api_wait(server, token, started["id"])
        ids["pipeline"] = started["id"]
    with server.client(token) as client:
        slow = client.post(
            f"{API}/jobs", json={"task": "slow_count", "input": {"to": 60, "delay_s": 0.5}}
        )
        assert slow.status_code == 202, slow.text
        ids["slow"] = slow.json()["id"]
        waiting = api_start(server, token, "research", {"question": "AI costs"})
        ids["waiting"] = waiting["id"]
        documents = client.get(f"{API}/documents", params={"limit": 100}).json()["items"]
        ids["document"] = next(d["id"] for d in documents if d["version"] > 1)
    time.sleep(1.5)  # the slow job is running, the vague research is asking
    return ids


def shoot(page: Page, server: Server, path: str, name: str, out: Path, settle_s: float) -> None:
    page.goto(f"{server.base}{path}")
    page.wait_for_load_state("networkidle")
    # let the self-refreshing tables refresh once (the queues page measures throughput)
    page.wait_for_timeout(settle_s * 1000)
    page.screenshot(path=str(out / name))
    print(f"saved {out / name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = start_dashboard_server(
            f"sqlite:///{Path(tmp) / 'screens.db'}", Path(tmp), app="examples.app:app"
        )
        worker = subprocess.Popen(
            [str(CONVEYOR_BIN), "worker", "--app", "examples.app:app", "--concurrency", "8"],
            cwd=ROOT,
            env=process_env({"CONVEYOR_DATABASE_URL": server.database_url}),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            ids = populate(server)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                context = browser.new_context(
                    viewport={"width": 1280, "height": 860}, device_scale_factor=1
                )
                page = context.new_page()
                page.goto(f"{server.base}/login")
                page.fill("#username", "admin")
                page.fill("#password", ADMIN_PASSWORD)
                page.click("form[action='/login'] button[type=submit]")
                page.wait_for_url("**/executions")
                pages: list[tuple[str, str, float]] = [
                    ("/executions", "executions.png", 0),
                    (f"/executions/{ids['research']}", "execution.png", 0),
                    (f"/executions/{ids['pipeline']}", "execution-fanout.png", 0),
                    ("/clarifications", "clarifications.png", 0),
                    ("/costs", "costs.png", 0),
                    ("/workers", "workers.png", 0),
                    ("/queues", "queues.png", 3.5),
                    (f"/documents/{ids['document']}/diff", "document-diff.png", 0),
                ]
                for path, name, settle_s in pages:
                    shoot(page, server, path, name, out, settle_s)
                browser.close()
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            stop_server(server)


if __name__ == "__main__":
    main()
