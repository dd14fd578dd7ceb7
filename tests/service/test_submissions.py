"""The same submission decided twice at once, with different history facts, is one case; a
different submission under a known id is still a conflict. Before this rule, the second of two
simultaneous copies was refused (409 from the API, a dead letter from a worker)."""

from __future__ import annotations

import json

from refundry.app.queue.worker import Decider
from refundry.app.submissions import recorded_as_submitted
from refundry.records.stores import open_store

from .conftest import make_request


def _with_history(request: dict, velocity: int) -> dict:
    return {**request, "facts": {"history": {"customer_refunds_30d": velocity}, "vip": True}}


def test_derived_facts_do_not_make_another_submission(tmp_path, engine):
    first = _with_history(make_request("s-1"), 0)
    with open_store(tmp_path / "s.db") as store:
        store.record(first, engine.evaluate(first), engine=engine, actor="api")
        assert recorded_as_submitted(store, _with_history(make_request("s-1"), 3)) is not None
        other = _with_history(make_request("s-1", amount="50.00"), 0)
        assert recorded_as_submitted(store, other) is None
        client_fact = {**first, "facts": {**first["facts"], "vip": False}}
        assert recorded_as_submitted(store, client_fact) is None  # what the client sent counts
        assert recorded_as_submitted(store, make_request("unknown")) is None


def test_a_worker_meeting_the_same_submission_recorded_elsewhere_does_not_dead_letter_it(
        tmp_path, engine):
    request = make_request("s-2")
    with open_store(tmp_path / "s.db") as store:
        # Recorded by the API a moment before, with history facts the worker will not derive.
        earlier = _with_history(request, 7)
        case, _ = store.record(earlier, engine.evaluate(earlier), engine=engine, actor="api")
        # The worker's own look sees no case yet (it decided before the API's commit): its
        # request carries the facts it derived then.
        late = {**request, "facts": {"history": {"customer_refunds_30d": 0}, "vip": True}}
        [outcome] = Decider(engine, store, "w1").decide([json.dumps(late).encode()])
        assert outcome.kind == "decided" and outcome.decision == case.decision
        assert len(list(store.events())) == 1
