"""refundry: a policy rules engine for refund approvals.

    import refundry
    engine = refundry.Engine.from_path("rulesets/")
    decision = engine.evaluate(request_json)      # a Decision, never an exception
    store = refundry.open_store("refundry.db")    # approval records (docs/records.md)
"""

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
from refundry.plugins.spec import hookimpl
from refundry.records.stores import open_store

__version__ = "0.1.0"

__all__ = [
    "Deadline", "Decision", "Engine", "EvaluationError", "Explanation", "InvalidRequest",
    "InvalidRulesets", "Reason", "RefundRequest", "RefundryError", "RequestError",
    "RulesetError", "RulesetInfo", "RulesetRef", "hookimpl", "open_store", "parse_request",
    "request_to_dict",
]
