"""Requests and decisions cross between processes (``refundry run --workers N``) as pickles,
which the models make from their fields in order (``models._pickled_by_position``): every
shipped case's decision and a range of requests must come back equal, of the same types, and
a subclass with fields of its own must come back whole."""

from __future__ import annotations

import json
import pickle

import attrs

import refundry
from refundry.app.testing import run_tests
from refundry.core.models import Decision, Reason, RefundRequest
from refundry.core.request import parse_request
from tests import fraudgen

from .conftest import ROOT, RULESETS


def test_every_shipped_decision_and_requests_come_back_equal() -> None:
    engine = refundry.Engine.from_path(RULESETS)
    decisions = [r.decision for r in run_tests(engine, [RULESETS]).results if r.decision]
    requests = [parse_request(r) for r in fraudgen.abusive(60)]
    requests.append(parse_request(json.loads((ROOT / "examples" / "request.json").read_text())))
    decisions += [engine.evaluate(r) for r in requests]
    assert len(decisions) > 100
    assert any(d.lines for d in decisions) and any(d.actions for d in decisions)
    assert any(d.deadlines for d in decisions) and any(r.items for r in requests)
    for value in [*decisions, *requests]:
        back = pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
        assert back == value and type(back) is type(value)
        assert back.to_dict() == value.to_dict() if isinstance(value, Decision) else True
    assert all(isinstance(pickle.loads(pickle.dumps(r)), RefundRequest) for r in requests)


def test_a_subclass_with_fields_of_its_own_is_pickled_whole() -> None:
    @attrs.frozen
    class Marked(Reason):
        mark: str = "x"

    globals()["Marked"] = Marked  # pickle finds a class by its module's name
    Marked.__qualname__ = "Marked"
    value = Marked("r1", "approve", "c", "m", "cm", "cit", mark="kept")
    back = pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
    assert back == value and back.mark == "kept" and type(back) is Marked
