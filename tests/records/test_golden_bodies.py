"""The stored chain is byte for byte what it was before masking was made a single pass (issue 11).

A fixed set of requests, valid and hostile (card numbers in free text, ids and ``facts``, as
integers and in fullwidth digits, security codes, diagnosis codes, emails and addresses, and
requests of the hostile corpus), is recorded both as a service records it (as sent) and as
``refundry run`` does (scrubbed at the source first), in a store with a fixed salt and clock.
Every stored event, hash included, must equal the golden copy made with the code before the
change (``data/golden_bodies.json``; ``python -m tests.records.test_golden_bodies`` rewrites it,
only ever from a revision known to be right). The hostile corpus is drawn from the shipped test
cases and the decisions come from the shipped rulesets, so a change to either changes the copy:
rewrite it from the revision before the change with the new cases, and check that only the
decisions and the corpus moved, never what masking stored.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

import refundry
from refundry.core.errors import RefundryError
from refundry.records import stores
from refundry.records.events import prepare_event
from refundry.records.masking import scrub_request
from refundry.records.stores import open_store

from ..conftest import RULESETS, make_request
from ..hostile_corpus import corpus

GOLDEN = Path(__file__).parent / "data" / "golden_bodies.json"
SALT = "5a" * 32
CARD = "4111 1111 1111 1111"


def requests() -> list[dict[str, Any]]:
    out = [make_request("g-plain"),
           make_request("g-acme", client_id="acme", amount="600"),
           make_request(f"g-card-in-id {CARD}"),
           make_request("g-note", note=f"card {CARD} cvv 123, the security code is 4567"),
           make_request("g-fullwidth", note="４１１１１１１１１１１１１１１１ and 5500-0000-0000-0004"),
           make_request("g-glued", note=f"{CARD}123 and ****.****.****.1111 1234567890123"),
           make_request("g-email", customer={"id": f"cust {CARD}", "email": "A.Person@Example.COM",
                                             "address": "1 High St, Town"}),
           make_request("g-facts", facts={"cvv": "123", "card_cvv2": 456, "n": 4111111111111111,
                                          "big": 2**60, "diagnosis_codes": ["J45"],
                                          f"key {CARD}": "x", "list": [CARD, 1.5, True, None]})]
    for req in corpus(200, seed=11):
        out.append(req)
    return out


def record_all(path: Path, monkeypatch: pytest.MonkeyPatch,
               ahead: bool = False, piped: bool = False) -> list[dict[str, Any]]:
    """Every request recorded; ``ahead``: masked and encoded first (``events.prepare_event``), as a
    worker process of ``refundry run --db --workers N`` does; ``piped``: and pickled and read
    back, as it crosses to the parent."""
    monkeypatch.setattr(stores, "new_salt", lambda: SALT)
    engine = refundry.Engine.from_path(RULESETS)
    clock = iter(dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC) + dt.timedelta(seconds=i)
                 for i in range(100_000))
    store = open_store(path, clock=lambda: next(clock))
    try:
        for i, req in enumerate(requests()):
            for how in ("sent", "scrubbed"):
                sent = copy.deepcopy(req)
                if isinstance(sent.get("request_id"), str):
                    sent["request_id"] = f"{sent['request_id']}#{i}-{how}"
                if how == "scrubbed":
                    sent = scrub_request(sent, bytes.fromhex(SALT))
                try:
                    decision = engine.evaluate(sent)
                    prepared = prepare_event(sent, decision, bytes.fromhex(SALT), texts=(),
                                             actor=store.recorded_actor("golden")) if ahead else None
                    if piped:
                        prepared = pickle.loads(pickle.dumps(prepared))
                    store.record(sent, decision, engine=engine, actor="golden", prepared=prepared)
                except (RefundryError, ValueError, TypeError):
                    continue  # a request the engine or the store refuses is not in the chain
        assert store.verify().ok
        return [e.to_dict() for e in store.events()]
    finally:
        store.close()


@pytest.mark.parametrize(("ahead", "piped"), [(False, False), (True, False), (True, True)],
                         ids=["in-record", "prepared-ahead", "prepared-in-a-worker"])
def test_stored_events_equal_the_golden_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             ahead: bool, piped: bool) -> None:
    got = json.loads(json.dumps(record_all(tmp_path / "g.db", monkeypatch, ahead, piped),
                                sort_keys=True))
    want = json.loads(GOLDEN.read_text())
    assert len(got) == len(want) and len(want) > 20
    for g, w in zip(got, want, strict=True):
        assert g == w


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        events = record_all(Path(tmp) / "g.db", mp)
    GOLDEN.write_text(json.dumps(events, sort_keys=True, indent=1) + "\n")
    print(f"{len(events)} events written to {GOLDEN}")
