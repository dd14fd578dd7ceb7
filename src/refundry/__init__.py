"""refundry: a policy rules engine for refund approvals.

    import refundry
    engine = refundry.Engine.from_path("rulesets/")
    decision = engine.evaluate(request_json)      # a Decision, never an exception
    store = refundry.open_store("refundry.db")    # approval records (docs/records.md)
"""

from typing import TYPE_CHECKING

from refundry.core.engine import Engine, Explanation, RulesetInfo
from refundry.core.errors import (
    EvaluationError,
    InvalidRequest,
    InvalidRulesets,
    RefundryError,
    RequestError,
    RulesetError,
)
from refundry.core.models import Deadline, Decision, Reason, RefundRequest, RulesetRef
from refundry.core.request import parse_request, request_to_dict

if TYPE_CHECKING:
    from refundry.plugins.spec import hookimpl
    from refundry.records.stores import open_store

__version__ = "0.1.0"

__all__ = [
    "Deadline", "Decision", "Engine", "EvaluationError", "Explanation", "InvalidRequest",
    "InvalidRulesets", "Reason", "RefundRequest", "RefundryError", "RequestError",
    "RulesetError", "RulesetInfo", "RulesetRef", "hookimpl", "open_store", "parse_request",
    "request_to_dict",
]

# The records store and the plugin host load on first use: `import refundry` (and every
# `refundry.cli` one-shot, which imports the package) would otherwise pay for the stores, the
# identity tables and pluggy before it decides anything.
_LAZY = {"open_store": "refundry.records.stores", "hookimpl": "refundry.plugins.spec"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'refundry' has no attribute {name!r}")
