"""Who is calling, and what their roles let them do."""

from __future__ import annotations

from dataclasses import dataclass

from conveyor.errors import PermissionDeniedError

ADMIN = "admin"
USER = "user"
WORKER = "worker"
ROLES = (ADMIN, USER, WORKER)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``id`` is the owner recorded on everything they create."""

    id: str
    username: str
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles

    @property
    def scope(self) -> str | None:
        """The owner filter for reads: admins see everything, others their own."""
        return None if self.is_admin else self.id

    def require(self, *roles: str) -> None:
        """Raise :class:`PermissionDeniedError` unless the caller has one of ``roles``
        (admins pass every check)."""
        if self.is_admin or self.roles.intersection(roles):
            return
        held = ", ".join(sorted(self.roles)) or "none"
        raise PermissionDeniedError(f"this needs the {' or '.join(roles)} role; you have {held}")
