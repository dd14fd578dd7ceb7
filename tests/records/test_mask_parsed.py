"""``masking.mask_parsed`` (a parsed request masked in one walk, without its dump) against what
it replaced, ``mask_request(request_to_dict(request, fields), salt)``: the masked request is
what the store hashes and what the history lookup keys, so it must not change by a byte. On
the shipped test requests, a seeded hostile corpus, hypothesis-made requests (card numbers and
security codes in ids, notes, emails and facts; huge integers; unicode) and requests built
around the parser with values it never makes (floats, mappings, subclasses)."""

from __future__ import annotations

import datetime as dt
import json
import types
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from refundry.core.errors import RefundryError
from refundry.core.models import Item, PaymentMethod, PriorRefund
from refundry.core.request import parse_request, request_to_dict
from refundry.records.index import KEY_FIELDS
from refundry.records.masking import mask_parsed, mask_request

from .. import hostile_corpus
from .test_masking_fast import PANS, TEXTS, VALUES, _same

SALT = bytes(range(32))
SUBSETS = (None, KEY_FIELDS, ("prior_refunds",), ("note", "request_id", "facts"),
           ("customer", "transaction", "items"))


def _outcome(fn: Any, *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # noqa: BLE001 - the two must fail alike too
        return ("raised", type(exc))


def _check(request: Any) -> None:
    for fields in SUBSETS:
        old = _outcome(lambda r, f: mask_request(request_to_dict(r, f), SALT), request, fields)
        new = _outcome(mask_parsed, request, SALT, fields)
        assert old[0] == new[0], (fields, old, new)
        if old[0] == "ok":
            # Equal, of the same types all the way down, in the same order, and the same bytes.
            assert _same(new[1], old[1]), fields
            assert json.dumps(new[1], default=str) == json.dumps(old[1], default=str)
        else:
            assert old == new


def test_equals_the_dump_masked_on_shipped_and_hostile_requests() -> None:
    requests = hostile_corpus.parsed_requests(1_500, seed=11)
    assert len(requests) > 200  # enough valid requests that the comparison means something
    for req in requests:
        _check(req)


def _base() -> dict[str, Any]:
    return json.loads(hostile_corpus.shipped_requests()[0], parse_float=Decimal)


CARDS = st.sampled_from([*PANS, "4111 1111 1111 1111", "cvv: 123 456", "４１１１１１１１１１１１１１１１",
                         "c-ü 4111-1111-1111-1111 \U0001f600", "cid#123 then 456"])
HOSTILE_TEXT = st.one_of(TEXTS, CARDS, st.text(max_size=30))
EMAILS = st.builds(lambda a, b: f"{a}@{b}", HOSTILE_TEXT, HOSTILE_TEXT)
PLACES = ("request_id", "client_id", "note", "customer.id", "customer.email",
          "customer.address", "transaction.id", "transaction.payment_method.last4",
          "items.0.sku", "prior_refunds.0.request_id", "facts.free", "facts.nested.x",
          "amount", "transaction.amount", "items.0.quantity", "requested_at")


def _put(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        if key.isdigit():
            doc = doc[int(key)]
            continue
        if key == "prior_refunds" and not doc.get(key):
            doc[key] = [{"amount": "1.00"}]
        if key == "items" and not doc.get(key):
            doc[key] = [{"sku": "X", "quantity": 1, "unit_price": "1.00"}]
        if not isinstance(doc.get(key), (dict, list)):
            doc[key] = {}
        doc = doc[key]
    doc[last] = value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PLACES),
                          st.one_of(HOSTILE_TEXT, EMAILS, VALUES)), max_size=5),
       st.one_of(st.none(), VALUES))
def test_equals_the_dump_masked_on_hostile_requests_that_parse(changes, facts) -> None:
    doc = _base()
    if facts is not None:
        doc["facts"] = {"given": facts}
    for path, value in changes:
        _put(doc, path, value)
    try:
        req = parse_request(doc)
    except RefundryError:
        assume(False)
    _check(req)


# Values the parser never makes, put in place around it (``attrs.evolve`` does not check):
# the fast walk hands their field to the dump and ``mask_request``.
class _Text(str):
    pass


ODD = st.one_of(
    VALUES,
    st.sampled_from([1.5, float("nan"), _Text("4111111111111111"), Decimal("4111111111111111"),
                     10**30, -(10**15), 4222222222222, True, dt.date(2024, 1, 2),
                     types.MappingProxyType({"a": "4111111111111111"}), [], (), {},
                     [{"cvv": "123", "x": 4111111111111111}], ("4111 1111 1111 1111", None),
                     PaymentMethod("card", "4242"), PaymentMethod(_Text("card"), 1234)]),
)
FIELDS = st.sampled_from(["request_id", "note", "facts", "amount", "items", "prior_refunds",
                          "customer", "transaction", "timezone", "diminished_value",
                          "requested_at", "refund_to", "healthcare"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(FIELDS, ODD), max_size=3),
       st.lists(st.tuples(st.sampled_from(["sku", "quantity", "unit_price"]), ODD), max_size=2),
       st.one_of(st.none(), ODD))
def test_equals_the_dump_masked_on_values_the_parser_never_makes(top, item, refund) -> None:
    req = parse_request(_base())
    changes = dict(top)
    if item:
        changes["items"] = (attrs.evolve(Item(sku="S", quantity=1, unit_price=Decimal("1")),
                                         **dict(item)),)
    if refund is not None:
        changes["prior_refunds"] = (PriorRefund(amount=refund),)  # type: ignore[arg-type]
    _check(attrs.evolve(req, **changes))


@pytest.mark.parametrize("value", [
    {"n": 12345678901234567, "text": "4111111111111111 \U0001f600", "cvv": "123",
     "deep": [{"x": 4111111111111111, "y": [Decimal("1.5"), None, True]}], "3": "three"},
    {"history": {"requests_by_customer_30d": 3, "refunded_for_transaction": "0.00"}},
])
def test_facts_as_the_parser_makes_them_are_walked_as_their_dump(value) -> None:
    req = parse_request({**_base(), "facts": value})
    _check(req)
    assert mask_parsed(req, SALT)["facts"] == mask_request(request_to_dict(req), SALT)["facts"]


def _reference(request: Any, salt: bytes, fields: Any = None) -> dict[str, Any]:
    """The masking ``mask_parsed`` replaced, for a run the old way."""
    return mask_request(request_to_dict(request, fields), salt)


def test_a_db_run_writes_byte_for_byte_what_the_dump_masked_wrote(tmp_path, monkeypatch) -> None:
    """``refundry run --db`` (one process, history on) over hostile lines, card numbers in
    ids, notes, emails and facts, huge integers and unicode: the chain (bodies and hashes),
    the decisions written, the journal and the dead letters are those of a run that masked
    each request's dump (the lookup's keys and the recorded request alike)."""
    import random

    import refundry
    from refundry.app import runner
    from refundry.app.runner import StoreRecorder, run
    from refundry.plugins.history import plugins_with_history
    from refundry.records import events, history, stores
    from refundry.records.history import History

    from .conftest import RULESETS, StepClock, make_request

    monkeypatch.setattr(stores, "new_salt", lambda: SALT.hex())
    rng = random.Random(5)
    lines = [hostile_corpus.json_line(doc, rng) for doc in hostile_corpus.corpus(300, seed=7)]
    odd = [make_request("odd-1", customer={"id": "c-ü 4111 1111 1111 1111 \U0001f600",
                                           "email": "Ünï 4111111111111111@Exämple.com"}),
           make_request("odd-2", customer={"id": "c-1", "address": "Straße 1, cvv 123"},
                         note="card 4111-1111-1111-1111 cvc: 123 456",
                         facts={"n": 12345678901234567, "big": 10**40,
                                "text": "4111111111111111 \U0001f600"}),
           make_request("4111 1111 1111 1111", customer={"id": "c-1"}),
           make_request("odd-3", customer={"id": "c-1"}),  # the same customer: history counts
           # Masking twice masks more than once ("cvv: *** 456" -> "cvv: *** ***"): what the
           # source gave is scrubbed on entry, and the store masks it again.
           make_request("odd-4", customer={"id": "cvv: 123 456"}, note="cid 123 4567",
                        transaction={"id": "cvc 1234 567", "amount": "119.99",
                                     "payment_method": {"type": "card", "last4": "4242"}})]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(line + b"\n" for line in lines)
                    + "".join(json.dumps(r) + "\n" for r in odd).encode())
    engine = refundry.Engine.from_path(RULESETS)
    got = []
    for way in ("reference", "fast"):
        reused = []
        if way == "reference":  # each request dumped and masked whole when recorded
            monkeypatch.setattr(events, "mask_parsed", _reference)
            monkeypatch.setattr(history, "mask_parsed", _reference)
            monkeypatch.setattr(runner, "masked_keys", lambda parsed, salt: None)
        else:
            monkeypatch.undo()
            monkeypatch.setattr(stores, "new_salt", lambda: SALT.hex())
            def spied(self: Any, request: Any, updated: Any = events.MaskedRequest.updated,
                      reused: list[str] = reused) -> Any:
                reused.append(request.request_id)
                return updated(self, request)

            monkeypatch.setattr(events.MaskedRequest, "updated", spied)
        out = tmp_path / way
        out.mkdir()
        with stores.open_store(str(out / "store.db"), clock=StepClock()) as store:
            index = History(store)
            summary = run(source="jsonl", input_path=src, out=out / "out.jsonl",
                          dead_letter=out / "dead.jsonl", rulesets=[RULESETS],
                          plugins=plugins_with_history(store, index), id_key=store.salt,
                          record=StoreRecorder(store, engine, "batch", index=index))
            assert store.verify().ok
            chain = [(e.seq, e.request_id, e.type, e.at, e.actor, e.hash, e.body)
                     for e in store.events()]
            texts = [store.ruleset_text(d) for _id, _v, d in store.ruleset_versions()]
        files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "store.db"}
        got.append((summary.to_dict()["outcomes"], chain, files, texts))
    assert got[0][1] and got[0][2]["dead.jsonl"]  # decisions recorded and dead letters written
    # The fast run recorded most requests with the fields its lookup had masked.
    assert len(reused) > len(got[1][1]) // 2
    assert got[0] == got[1]


REPLACED = st.sampled_from([
    ("facts", {"history": {"requests_by_customer_30d": 2, "other_clients_flag": False}}),
    ("facts", {"n": 4111111111111111, "t": "cvv: 123 456"}),
    ("prior_refunds", [{"amount": "5.00", "request_id": "4111 1111 1111 1111"}]),
    ("customer", {"id": "cvv: 123 456", "email": "4111111111111111@x.com", "address": "A 1"}),
    ("note", "card 4111-1111-1111-1111 cvc: 123 456"),
    ("request_id", "4111111111111111"),
    ("transaction", {"id": "t-2", "amount": "10.00"}),
    ("amount", "1000000000009.00"),
])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PLACES), st.one_of(HOSTILE_TEXT, EMAILS)), max_size=4),
       st.lists(REPLACED, max_size=3), st.booleans())
def test_an_updated_masking_equals_the_whole_request_masked(changes, replaced, reparse) -> None:
    """``MaskedRequest.updated``: the key fields masked before the enrichers, the rest and
    what they replaced masked after, is the whole request's masking; also for a request parsed
    anew (no field shared) and one whose replaced fields do not parse."""
    from refundry.core.request import replace_fields
    from refundry.records.history import masked_keys

    doc = _base()
    for path, value in changes:
        _put(doc, path, value)
    try:
        before = parse_request(doc)
        after = parse_request({**doc, **dict(replaced)}) if reparse \
            else replace_fields(before, dict(replaced))
    except RefundryError:
        assume(False)
    keyed = masked_keys(before, SALT)
    assert keyed is not None and list(keyed.masked) == [k for k in KEY_FIELDS if k in keyed.masked]
    got = keyed.updated(after)
    want = mask_request(request_to_dict(after), SALT)
    assert _same(got, want)
    assert json.dumps(got) == json.dumps(want)


# --- a decision masked from the object (``mask_decision``) against its dict masked -----------


def _decisions() -> list[Any]:
    import refundry

    from .conftest import RULESETS

    engine = refundry.Engine.from_path(RULESETS)
    out = [engine.evaluate(r) for r in hostile_corpus.parsed_requests(400, seed=13)]
    request = json.loads(hostile_corpus.shipped_requests()[0], parse_float=Decimal)
    # The engine's own reasons (no ruleset in force, an invalid request): masked afresh.
    out += [engine.evaluate(request, ruleset="nope-4111111111111111"),
            engine.evaluate({**request, "amount": "4111 1111 1111 1111"})]
    return out


def _check_decision(decision: Any) -> None:
    from refundry.records.masking import mask_decision, mask_snapshot

    old = _outcome(lambda d: mask_snapshot(d.to_dict()), decision)
    new = _outcome(mask_decision, decision)
    assert old[0] == new[0] and (old[0] != "ok" or _same(new[1], old[1])), (old, new)
    if old[0] == "ok":
        assert json.dumps(new[1]) == json.dumps(old[1])
    else:
        assert old == new


def test_a_decision_masked_from_the_object_equals_its_dict_masked() -> None:
    decisions = _decisions()
    assert len({d.outcome for d in decisions}) >= 3 and any(d.actions for d in decisions)
    for decision in decisions:
        _check_decision(decision)
        _check_decision(decision)  # again, with the rule texts remembered


DECISION_FIELDS = st.sampled_from(["request_id", "currency", "amount", "as_of", "errors",
                                   "reasons", "deadlines", "lines", "actions", "ruleset"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(DECISION_FIELDS, ODD), max_size=2), st.integers(0, 10_000),
       st.lists(st.tuples(st.sampled_from(["rule_id", "message", "citation", "floor", "sku",
                                           "quantity", "amount", "due", "customer_messages",
                                           "rule_ids", "name", "layers", "digest", "type"]),
                          st.one_of(ODD, CARDS, st.just("refundry.x 4111111111111111"),
                                    st.just((("cvv", "x"), ("de", "4111111111111111"))))),
                max_size=2))
def test_odd_decisions_masked_from_the_object_equal_their_dict_masked(top, pick, inner) -> None:
    """Values the engine never puts in a decision (put there around it): the object walk
    hands the decision to the dict's masking, or gives what it gives."""
    decisions = _DECISIONS or _DECISIONS.extend(_decisions()) or _DECISIONS
    decision = decisions[pick % len(decisions)]
    for name, value in inner:  # into the first reason, deadline, line, action or layer
        for part in ("reasons", "deadlines", "lines", "actions"):
            items = getattr(decision, part)
            if items and name in attrs.fields_dict(type(items[0])):
                decision = attrs.evolve(decision, **{part: (attrs.evolve(items[0], **{name: value}),
                                                            *items[1:])})
                break
        else:
            ref = decision.ruleset
            if ref is not None and name in attrs.fields_dict(type(ref)):
                decision = attrs.evolve(decision, ruleset=attrs.evolve(ref, **{name: value}))
    try:
        decision = attrs.evolve(decision, **dict(top))
    except (TypeError, ValueError):
        assume(False)
    _check_decision(decision)


_DECISIONS: list[Any] = []


def _one_of_each(decision: Any) -> Any:
    """``decision`` with a line, an action and the rule parts holding card numbers and codes."""
    from refundry.core.models import Action, Deadline, Line, Reason

    card, code = "4111 1111 1111 1111", "cvv: 123 456"
    reason = Reason(rule_id="r-4111111111111111", effect="approve", code=code,
                    message=f"paid with {card}", customer_message=code, citation=card,
                    customer_messages=(("de", card), ("en", code)))
    return attrs.evolve(
        decision, amount=Decimal("4111111111111111"), errors=(card, code),
        reasons=(reason, *decision.reasons),
        deadlines=(Deadline(name=card, due=dt.date(2024, 1, 2), citation=code,
                            rule_id="refundry.x " + card),),
        lines=(Line(sku=card, quantity=4111111111111111, outcome="approve",
                    amount=Decimal("4111111111111111"), rule_ids=(card, "r-1")),
               Line(sku=None, quantity=1, outcome="deny", amount=None, rule_ids=())),
        actions=(Action(type="provisional_credit", amount=Decimal("4111111111111111"),
                        due=None, citation=card, rule_id=code),))


def test_card_numbers_and_codes_in_every_part_of_a_decision_are_masked_as_its_dict_is() -> None:
    decision = _one_of_each(_decisions()[0])
    _check_decision(decision)
    from refundry.records.masking import mask_decision

    text = json.dumps(mask_decision(decision))
    assert "4111 1111 1111 1111" not in text and "4111111111111111" not in text
    assert "123 456" not in text


def test_the_engine_own_reasons_are_never_remembered_when_masked_from_the_object() -> None:
    import refundry
    from refundry.records import masking

    from .conftest import RULESETS

    request = json.loads(hostile_corpus.shipped_requests()[0], parse_float=Decimal)
    decision = refundry.Engine.from_path(RULESETS).evaluate(request, ruleset="remember-me-1234")
    assert decision.reasons[0].rule_id == "refundry.no-ruleset"
    _check_decision(decision)
    remembered = masking._RULE_TEXTS  # noqa: SLF001 - what the memory holds is the point here
    assert not [t for t in remembered if "remember-me" in t]
    assert decision.reasons[0].message not in remembered
