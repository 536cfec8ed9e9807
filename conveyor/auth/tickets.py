"""Short-lived, single-use stream tickets: browser auth for SSE without a JWT in the URL.

A signed-in client asks for a ticket for one stream (``execution:<id>`` or ``job:<id>``);
the ticket works once, for that stream only, within a minute. Tickets live in the
database (hashed), so any API replica can redeem them.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import delete, update

from conveyor.errors import AuthenticationError
from conveyor.store.database import Database, Tx
from conveyor.store.schema import stream_tickets
from conveyor.store.sql import db_now, db_now_plus

TICKET_TTL_S = 60


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


class StreamTickets:
    def __init__(self, db: Database, ttl_s: int = TICKET_TTL_S) -> None:
        self.db = db
        self.ttl_s = ttl_s

    async def issue(self, owner: str, scope: str) -> tuple[str, int]:
        ticket = secrets.token_urlsafe(32)

        def body(tx: Tx) -> None:
            tx.conn.execute(
                stream_tickets.insert().values(
                    ticket_hash=_digest(ticket),
                    owner=owner,
                    scope=scope,
                    expires_at=db_now_plus(float(self.ttl_s)),
                    created_at=db_now(),
                )
            )
            # forget tickets that expired long ago (keeps the table tiny)
            tx.conn.execute(
                delete(stream_tickets).where(stream_tickets.c.expires_at < db_now_plus(-3600.0))
            )

        await self.db.write(body)
        return ticket, self.ttl_s

    async def redeem(self, ticket: str, scope: str) -> str:
        """The owner the ticket was issued to; it cannot be used again."""
        if not ticket or len(ticket) > 200:
            raise AuthenticationError("invalid stream ticket")

        def body(tx: Tx) -> str | None:
            row = tx.conn.execute(
                update(stream_tickets)
                .where(
                    stream_tickets.c.ticket_hash == _digest(ticket),
                    stream_tickets.c.scope == scope,
                    stream_tickets.c.used_at.is_(None),
                    stream_tickets.c.expires_at > db_now(),
                )
                .values(used_at=db_now())
                .returning(stream_tickets.c.owner)
            ).first()
            return None if row is None else str(row.owner)

        owner = await self.db.write(body)
        if owner is None:
            raise AuthenticationError("stream ticket is invalid, used or expired")
        return owner
