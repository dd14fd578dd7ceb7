"""Errors that refundry raises. Every one prints as a single lower-case line.

The structured fields (path, line, column, rule id, field) let tools place the error without
parsing the message; ``str(error)`` is what a person reads: ``file:line:col: rule `id`: message``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


def did_you_mean(word: object, known: Iterable[str]) -> str:
    """``; did you mean `x`?`` when one known name is close to what was typed, else nothing."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(known), n=1)
    return f"; did you mean `{close[0]}`?" if close else ""


class RefundryError(Exception):
    """Base class of every error refundry raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        column: int | None = None,
        rule_id: str | None = None,
        field: str | None = None,
    ) -> None:
        # One line, always: a hostile value with newlines must not forge extra error lines.
        self.message = " ".join(str(message).split())
        self.path = path
        self.line = line
        self.column = column
        self.rule_id = rule_id
        self.field = field
        super().__init__(self.__str__())

    @property
    def location(self) -> str:
        if self.path is None:
            return ""
        loc = self.path
        if self.line is not None:
            loc += f":{self.line}"
            if self.column is not None:
                loc += f":{self.column}"
        return loc

    def __str__(self) -> str:
        parts = []
        if self.location:
            parts.append(self.location)
        if self.rule_id:
            parts.append(f"rule `{self.rule_id}`")
        if self.field:
            parts.append(f"field `{self.field}`")
        parts.append(self.message)
        return ": ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {
            "message": self.message,
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "rule_id": self.rule_id,
            "field": self.field,
        }


class RulesetError(RefundryError):
    """A ruleset (or a ruleset test file) is malformed or breaks a semantic check."""


class RequestError(RefundryError):
    """A refund request does not match the canonical request format."""


class EvaluationError(RefundryError):
    """A rule could not be evaluated against a request (a bug or an unforeseen value)."""


class ErrorGroup(RefundryError):
    """Several errors found at once: a validator reports all of them, not just the first."""

    def __init__(self, errors: Iterable[RefundryError]) -> None:
        self.errors: Sequence[RefundryError] = tuple(errors)
        first = self.errors[0] if self.errors else None
        count = len(self.errors)
        summary = f"{count} error{'s' if count != 1 else ''}"
        if first is not None:
            summary += f", the first: {first}"
        super().__init__(summary)

    def __str__(self) -> str:  # pragma: no cover - exercised through the CLI
        return "\n".join(str(e) for e in self.errors)


class InvalidRulesets(ErrorGroup, RulesetError):
    """Raised by the loader with every problem found in the rulesets given to it."""


class InvalidRequest(ErrorGroup, RequestError):
    """Raised by the request parser with every problem found in one request."""
