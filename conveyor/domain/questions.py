"""Questions a step asks a human, each with a JSON Schema for its answer."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from conveyor.errors import AnswerValidationError, InvalidInputError

_QUESTION_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}\Z")
_NO_DEFAULT = object()
MAX_QUESTIONS = 50


@dataclass(frozen=True, slots=True)
class Question:
    """``Question("topic", "Which topic?", {"type": "string"})``.

    ``default`` is used when the clarification times out with ``on_timeout="default"``
    (and fills an answer the human left out).
    """

    id: str
    text: str
    schema: Mapping[str, Any]
    default: Any = _NO_DEFAULT

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "text": self.text, "schema": dict(self.schema)}
        if self.has_default:
            data["default"] = self.default
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Question:
        if "default" in data:
            return cls(data["id"], data["text"], data["schema"], data["default"])
        return cls(data["id"], data["text"], data["schema"])


def check_questions(questions: list[Question]) -> None:
    """Refuse questions that could never be answered well."""
    if not questions:
        raise InvalidInputError("ask at least one question")
    if len(questions) > MAX_QUESTIONS:
        raise InvalidInputError(f"at most {MAX_QUESTIONS} questions at once")
    seen: set[str] = set()
    for q in questions:
        if not _QUESTION_ID.match(q.id):
            raise InvalidInputError(f"invalid question id {q.id!r}")
        if q.id in seen:
            raise InvalidInputError(f"duplicate question id {q.id!r}")
        seen.add(q.id)
        if not q.text or len(q.text) > 4000:
            raise InvalidInputError(f"question {q.id!r}: text must be 1-4000 characters")
        try:
            Draft202012Validator.check_schema(dict(q.schema))
        except jsonschema.SchemaError as exc:
            raise InvalidInputError(
                f"question {q.id!r}: invalid JSON Schema: {exc.message}"
            ) from None
        if q.has_default:
            problems = _problems(q, q.default)
            if problems:
                raise InvalidInputError(f"question {q.id!r}: default breaks its schema")


def _problems(question: Question, value: Any) -> list[dict[str, Any]]:
    validator = Draft202012Validator(dict(question.schema))
    return [
        {"loc": [question.id, *[str(p) for p in err.absolute_path]], "msg": err.message}
        for err in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    ]


def validate_answers(questions: list[Question], answers: Mapping[str, Any]) -> dict[str, Any]:
    """The complete, valid answers, or :class:`AnswerValidationError` listing every problem."""
    if not isinstance(answers, Mapping):
        raise AnswerValidationError("answers must be an object keyed by question id")
    by_id = {q.id: q for q in questions}
    details: list[dict[str, Any]] = []
    for key in answers:
        if key not in by_id:
            details.append({"loc": [str(key)], "msg": "no such question"})
    result: dict[str, Any] = {}
    for q in questions:
        if q.id in answers:
            details.extend(_problems(q, answers[q.id]))
            result[q.id] = answers[q.id]
        elif q.has_default:
            result[q.id] = q.default
        else:
            details.append({"loc": [q.id], "msg": "an answer is required"})
    if details:
        raise AnswerValidationError("some answers do not fit their questions", details=details)
    return result


def default_answers(questions: list[Question]) -> dict[str, Any] | None:
    """Every question's default, or ``None`` if some question has none."""
    if not all(q.has_default for q in questions):
        return None
    return {q.id: q.default for q in questions}
