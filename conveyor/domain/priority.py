"""Job priorities. Lower numbers are claimed first."""

from __future__ import annotations

from enum import IntEnum

from conveyor.errors import InvalidInputError


class Priority(IntEnum):
    CRITICAL = 0
    HIGH = 1
    MEDIUM = 2
    LOW = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: Priority | str | int | None) -> Priority:
        """Accept a Priority, its name (any case) or its number; ``None`` means medium."""
        if value is None:
            return cls.MEDIUM
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                names = ", ".join(p.label for p in cls)
                raise InvalidInputError(f"unknown priority {value!r}; use one of {names}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                raise InvalidInputError(f"priority must be 0..3, got {value}") from None
        raise InvalidInputError(f"priority must be a name or 0..3, got {value!r}")
