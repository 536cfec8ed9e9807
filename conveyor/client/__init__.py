"""HTTP clients for a Conveyor server (httpx2): :class:`Client` and :class:`AsyncClient`.

::

    from conveyor.client import Client

    with Client("http://127.0.0.1:8000", token=token) as conveyor:
        job = conveyor.submit("add", {"a": 1, "b": 2})
        done = conveyor.wait(job["id"])

Both return the JSON documents of the HTTP contract and raise the same
:class:`~conveyor.errors.ConveyorError` subclasses as the engine (404 ->
``NotFoundError``, 409 -> ``ConflictError``, 422 -> ``InvalidInputError`` with the
problem's field errors as ``details``...).
"""

from conveyor.client.aio import AsyncClient
from conveyor.client.sync import Client

__all__ = ["AsyncClient", "Client"]
