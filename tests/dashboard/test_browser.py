"""The dashboard in a real browser: sign in, start the research example from its form,
watch it live, answer its clarification, read the report, cancel, pause a queue, and
agent output that tries to run script shown as plain text."""

from __future__ import annotations

import re
import uuid

from playwright.sync_api import Page, expect

from tests.dashboard.conftest import API, new_account, sign_in, watch
from tests.servers import Server

XSS = "<script>alert(1)</script> and <img src=x onerror=alert(1)>"


def start_from_form(page: Page, server: Server, workflow: str, fields: dict[str, str]) -> str:
    """Fill the generated start form; return the new execution's id."""
    page.goto(f"{server.base}/executions")
    page.click(f"a[href='/workflows/{workflow}/start']")
    for name, value in fields.items():
        page.fill(f"[name='in.{name}']", value)
    page.click("form[action$='/start'] button[type=submit]")
    page.wait_for_url(re.compile(r".*/executions/[0-9a-f-]{36}(\?.*)?$"))
    return page.url.split("/executions/")[1].split("?")[0]


def test_sign_in_rejects_a_wrong_password_then_signs_in_and_out(page: Page, server: Server) -> None:
    account = new_account(server)
    page.goto(f"{server.base}/executions")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fexecutions$"))
    page.fill("#username", account.username)
    page.fill("#password", "not the password")
    page.click("form[action='/login'] button[type=submit]")
    expect(page.locator("p.error")).to_have_text("Wrong username or password.")
    sign_in(page, server, account)
    expect(page.locator(".topbar .user")).to_contain_text(account.username)
    # users see no operator pages
    expect(page.locator(".topbar nav a[href='/workers']")).to_have_count(0)
    page.click(".topbar form[action='/logout'] button")
    expect(page.locator("p.notice")).to_have_text("Signed out.")
    page.goto(f"{server.base}/executions")
    expect(page).to_have_url(re.compile(r"/login"))


def test_research_runs_live_asks_a_question_and_writes_its_report(
    page: Page, server: Server
) -> None:
    account = new_account(server)
    sign_in(page, server, account)
    # vague (two words; digits are not words): the first step will ask
    question = f"Agent costs {uuid.uuid4().int % 10**6}"
    execution_id = start_from_form(page, server, "research", {"question": question})

    # the detail page: the DAG and the steps, refine_question waiting for an answer
    nodes = page.locator("svg.dag a.node")
    expect(nodes).to_have_count(3)
    node = page.locator("svg.dag a.node[data-step='refine_question']")
    expect(node).to_have_attribute("data-status", "awaiting_input")
    expect(page.locator("svg.dag a.node[data-step='synthesis']")).to_have_attribute(
        "data-status", "pending"
    )
    # this page is never reloaded from here on: the marker would be lost
    page.evaluate("window.__notReloaded = true")

    # the inbox, in a second tab: an invalid answer first, then a valid one
    inbox = page.context.new_page()
    seen = watch(inbox)
    inbox.goto(f"{server.base}/clarifications")
    card = inbox.locator(f"article.clarification[data-execution='{execution_id}']")
    expect(card).to_contain_text(f"'{question}' is broad")
    card.locator("[name='in.focus']").fill("ab")
    card.locator("button[type=submit]").click()
    card = inbox.locator(f"article.clarification[data-execution='{execution_id}']")
    focus = card.locator(".field[data-field='focus']")
    expect(focus.locator(".field-error")).to_contain_text("too short")
    expect(focus.locator("input")).to_have_value("ab")  # what was typed is kept
    expect(page.locator("svg.dag a.node[data-step='refine_question']")).to_have_attribute(
        "data-status", "awaiting_input"
    )  # still waiting
    focus.locator("input").fill("inference cost")
    card.locator("[name='in.audience']").select_option("expert")
    card.locator("button[type=submit]").click()
    inbox.wait_for_url(re.compile(rf"/executions/{execution_id}\?notice=answered$"))
    assert seen.dialogs == [] and seen.csp_violations == []

    # back on the first tab: the steps turned completed live, without a reload
    for step in ("refine_question", "literature_scout", "synthesis"):
        expect(page.locator(f"svg.dag a.node[data-step='{step}']")).to_have_attribute(
            "data-status", "completed"
        )
        expect(page.locator(f"tr.step-row[data-step='{step}']")).to_have_attribute(
            "data-status", "completed"
        )
        expect(page.locator(f"progress[data-step='{step}']")).to_have_attribute("value", "100")
    expect(page.locator(".summary .badge")).to_have_text("completed")
    assert page.evaluate("window.__notReloaded") is True

    # the report document it saved
    page.click("ul.documents a")
    expect(page.locator("h1")).to_have_text(f"Research brief: {question}")
    expect(page.locator("pre.document-text")).to_contain_text("*Audience: expert*")
    expect(page.locator("pre.document-text")).to_contain_text("inference cost")
    page.goto(f"{server.base}/documents")
    expect(page.locator("#documents")).to_contain_text(f"Research brief: {question}")


def test_a_running_execution_moves_live_and_is_cancelled(page: Page, server: Server) -> None:
    account = new_account(server)
    sign_in(page, server, account)
    start_from_form(page, server, "countdown", {"seconds": "60"})
    count = page.locator("svg.dag a.node[data-step='count']")
    expect(count).to_have_attribute("data-status", "active")
    bar = page.locator("progress[data-step='count']")
    # progress frames move the bar without a reload
    expect(bar).not_to_have_attribute("value", "0")
    first = int(bar.get_attribute("value") or 0)
    expect(bar).not_to_have_attribute("value", str(first))
    page.click(".actions form[action$='/cancel'] button")
    expect(page.locator("p.notice").first).to_have_text("Cancel requested.")
    expect(page.locator(".summary .badge")).to_have_text("cancelled")
    expect(count).to_have_attribute("data-status", "cancelled")
    expect(page.locator("svg.dag a.node[data-step='report']")).to_have_attribute(
        "data-status", "cancelled"
    )
    expect(page.locator(".actions form[action$='/retry'] button")).to_be_visible()


def test_an_admin_pauses_and_resumes_a_queue(page: Page, server: Server) -> None:
    admin = new_account(server, "admin")
    queue = f"pause-{uuid.uuid4().hex[:6]}"
    with server.client(admin.token) as client:  # a job puts the queue on the list
        created = client.post(
            f"{API}/jobs", json={"task": "echo", "input": {"text": "hi"}, "queue": queue}
        )
        assert created.status_code == 202, created.text
    sign_in(page, server, admin)
    page.goto(f"{server.base}/queues")
    row = page.locator(f"#queues tr[data-queue='{queue}']")
    expect(row).to_have_attribute("data-paused", "false")
    row.locator("button", has_text="Pause").click()
    expect(page.locator("p.notice")).to_contain_text("Queue paused")
    row = page.locator(f"#queues tr[data-queue='{queue}']")
    expect(row).to_have_attribute("data-paused", "true")
    expect(row.locator(".badge")).to_have_text("paused")
    row.locator("button", has_text="Resume").click()
    expect(page.locator("p.notice")).to_have_text("Queue resumed.")
    expect(page.locator(f"#queues tr[data-queue='{queue}']")).to_have_attribute(
        "data-paused", "false"
    )


def test_agent_output_with_markup_is_shown_as_text(page: Page, server: Server) -> None:
    account = new_account(server)
    sign_in(page, server, account)
    execution_id = start_from_form(page, server, "echo", {"text": XSS})
    expect(page.locator(".summary .badge")).to_have_text("completed")
    output = page.locator("h2:has-text('Output') + pre.json")
    expect(output).to_contain_text(XSS)  # the literal text, visible
    page.locator("tr.step-details summary").first.click()
    expect(page.locator("tr.step-details pre.json").nth(1)).to_contain_text(XSS)
    # nothing was parsed as markup
    assert page.locator("img[src='x']").count() == 0
    assert page.evaluate("document.scripts.length") == 2  # htmx and app.js only

    # the same text as a step's error message, on the job page
    page.goto(f"{server.base}/workflows/echo/start")
    page.fill("[name='in.text']", XSS)
    page.select_option("[name='in.fail']", "true")
    page.click("form[action$='/start'] button[type=submit]")
    expect(page.locator(".summary .badge")).to_have_text("failed")
    expect(page.locator("pre.error-block").first).to_contain_text(XSS)
    page.locator("tr.step-details summary").first.click()
    page.locator("tr.step-details a[href^='/jobs/']").click()
    expect(page.locator("pre.error-block")).to_contain_text(XSS)
    page.goto(f"{server.base}/executions")
    expect(page.locator(f"tr[data-execution='{execution_id}']")).to_be_visible()
    assert page.locator("img[src='x']").count() == 0


def test_the_workers_table_refreshes_itself(page: Page, server: Server) -> None:
    admin = new_account(server, "admin")
    sign_in(page, server, admin)
    page.goto(f"{server.base}/workers")
    table = page.locator("#workers")
    expect(table.locator("tr[data-worker]")).not_to_have_count(0)
    expect(table.locator("tr[data-worker] .badge").first).to_have_text(
        re.compile("idle|busy|active")
    )
    page.evaluate("document.querySelector('#workers').dataset.probe = 'old'")
    # htmx swaps in a new table within a few seconds (the probe goes with the old one)
    expect(page.locator("#workers[data-probe='old']")).to_have_count(0, timeout=6000)
    expect(page.locator("#workers td[data-heartbeat]").first).to_contain_text("ago")


def test_a_user_sees_no_admin_controls(page: Page, server: Server) -> None:
    account = new_account(server)
    with server.client(account.token) as client:  # a job puts a queue on the list
        created = client.post(f"{API}/jobs", json={"task": "echo", "input": {"text": "hi"}})
        assert created.status_code == 202, created.text
    sign_in(page, server, account)
    page.goto(f"{server.base}/queues")
    expect(page.locator("#queues")).to_be_visible()
    expect(page.locator("#queues button")).to_have_count(0)
    expect(page.locator("form[action$='/clean']")).to_have_count(0)
    page.goto(f"{server.base}/workers")
    expect(page.locator("h1")).to_have_text("Not allowed")


def test_a_job_moves_live_is_cancelled_and_retried(page: Page, server: Server) -> None:
    account = new_account(server)
    with server.client(account.token) as client:
        created = client.post(f"{API}/jobs", json={"task": "countdown", "input": {"seconds": 60}})
        assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    sign_in(page, server, account)
    page.goto(f"{server.base}/jobs")
    page.click(f"#jobs tr[data-job='{job_id}'] a")
    badge = page.locator(".summary .badge")
    expect(badge).to_have_text("active")
    bar = page.locator(".summary progress")
    expect(bar).not_to_have_attribute("value", "0")
    expect(page.locator(".summary .progress-message")).to_contain_text(" of 600")
    page.click(".actions form[action$='/cancel'] button")
    expect(badge).to_have_text("cancelled")
    page.click(".actions form[action$='/retry'] button")
    expect(page.locator("p.notice")).to_have_text("Retry queued.")
    expect(badge).to_have_text("active")
    page.click(".actions form[action$='/cancel'] button")
    expect(badge).to_have_text("cancelled")
