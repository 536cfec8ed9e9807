"""The app the security tests serve (``conveyor serve --app tests.security.app:app``).

* ``use_secret`` takes a ``SecretStr`` (sealed at rest, scrubbed from errors) and can
  succeed, fail once then succeed, fail for good with the secret in the message, or wait
  to be cancelled (S11);
* ``fetch`` calls ``ctx.http`` with a URL from the job input (S10);
* ``opaque`` returns a type that has no JSON Schema, so the step-schema route of the
  ``broken_schema`` workflow hits a genuine internal error (S14);
* ``ask_name`` and ``note`` give the clarification and document routes something to
  serve (S6);
* ``echo``, ``add`` and ``ticker`` are plain work for quotas, filters and streams.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any, Literal

from pydantic import SecretStr

from conveyor import Context, Conveyor
from conveyor.domain.graph import Step
from conveyor.domain.questions import Question
from conveyor.workflows import Workflow

app = Conveyor("security-tests")


@app.task(retries=0)
async def echo(ctx: Context, text: str = "") -> str:
    return text


@app.task(retries=0)
async def add(ctx: Context, a: int, b: int) -> int:
    return a + b


@app.task(retries=0)
async def ticker(ctx: Context, count: int = 20, interval: float = 0.05) -> int:
    """``count`` progress events, one every ``interval`` seconds."""
    for i in range(count):
        ctx.progress(100 * (i + 1) / count, str(i))
        await asyncio.sleep(interval)
    return count


def fingerprint(secret: str) -> str:
    """What ``use_secret`` returns instead of its secret: proof it received the value."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


@app.task(retries=1, backoff=0.1)
async def use_secret(
    ctx: Context,
    api_key: SecretStr,
    mode: Literal["ok", "retry", "fail", "sleep"] = "ok",
) -> dict[str, Any]:
    secret = api_key.get_secret_value()
    if mode == "retry" and ctx.attempt == 1:
        raise ConnectionError(f"the upstream refused the key {secret}; try again")
    if mode == "fail":
        try:
            raise KeyError(secret)
        except KeyError as exc:
            raise RuntimeError(f"authentication failed with api_key={secret!r}") from exc
    if mode == "sleep":
        while True:
            ctx.raise_if_cancelled()
            await asyncio.sleep(0.05)
    return {"fingerprint": fingerprint(secret), "length": len(secret)}


@app.task(retries=2, backoff=0.1)
async def fetch(ctx: Context, url: str) -> dict[str, Any]:
    response = await ctx.http.get(url)
    return {"status": response.status_code, "bytes": len(response.content)}


@app.task(retries=0)
async def opaque(ctx: Context) -> Callable[[], int]:
    """Its output type (a callable) has no JSON Schema."""
    return lambda: 1


@app.task(retries=0)
async def ask_name(ctx: Context) -> str:
    answers = await ctx.ask([Question("name", "Your name?", {"type": "string", "minLength": 2})])
    return f"hello {answers['name']}"


@app.task(retries=0)
async def note(ctx: Context, text: str = "a note") -> dict[str, Any]:
    """Saves a versioned document (for the documents routes)."""
    return await ctx.save_document("note", "A note", text)


app.add_workflow(Workflow("secret_flow", [Step("use", "use_secret")]))
app.add_workflow(Workflow("broken_schema", [Step("opaque", "opaque")]))
app.add_workflow(Workflow("greeting", [Step("ask", "ask_name")]))
app.add_workflow(Workflow("noting", [Step("note", "note")]))
app.add_workflow(
    Workflow(
        "pipeline",
        [Step("first", "echo", input={"text": "one"}), Step("second", "echo", ["first"])],
    )
)
