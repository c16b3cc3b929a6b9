"""Cross-field validation rules, written once and enforced twice.

Each :class:`Rule` carries a CEL expression (rendered into the CRD as ``x-kubernetes-validations``, so the API
server refuses bad input at apply time) and the same check as a Python predicate (run by pydantic when the
operator parses a resource). Both report the same message, so a user sees one wording whichever side caught
the mistake. Keep the two halves of a rule next to each other when editing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

Reason = Literal["FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"]
M = TypeVar("M")


@dataclass(frozen=True)
class Rule(Generic[M]):
    """One rule on the object described by model ``M``.

    ``field_path`` is relative to that object (``.training.lora``), as the API server expects; the error is
    reported on that field. ``check`` returns True when the object is valid. ``server_only`` rules (those that
    read ``oldSelf`` or metadata the operator does not parse) have no Python half.
    """

    cel: str
    message: str
    field_path: str = ""
    reason: Reason | None = None
    check: Callable[[M], bool] | None = None
    message_expression: str | None = None
    server_only: bool = False

    def to_schema(self) -> dict[str, Any]:
        """The ``x-kubernetes-validations`` entry."""
        out: dict[str, Any] = {"rule": self.cel, "message": self.message}
        if self.message_expression:
            out["messageExpression"] = self.message_expression
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


class RuleViolation(ValueError):
    """Raised by a model validator; carries the path (relative to the model) that the rule names."""

    def __init__(self, violations: Sequence[tuple[str, str]]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(f"{path.lstrip('.')}: {msg}" if path else msg for path, msg in self.violations))


def validations(rules: Sequence[Rule[Any]]) -> dict[str, Any]:
    """``json_schema_extra`` for a model or field: its CEL rules."""
    return {"x-kubernetes-validations": [r.to_schema() for r in rules]}


def enforce(obj: M, rules: Sequence[Rule[M]]) -> M:
    """Run the Python half of every rule; raise one RuleViolation listing all that fail."""
    failed = [(r.field_path, r.message) for r in rules if r.check is not None and not r.check(obj)]
    if failed:
        raise RuleViolation(failed)
    return obj


def exactly_one(fields: Sequence[str]) -> str:
    """CEL: exactly one of the optional fields is set."""
    return "[" + ", ".join(f"has(self.{f})" for f in fields) + "].filter(x, x).size() == 1"
