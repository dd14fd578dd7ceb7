"""History enrichment and the northwind-eu fraud layer, on real stores (SQLite and PostgreSQL).

The generated histories (tests/fraudgen.py) hold 300 requests each: one clean, one with 26
planted abusive requests (a serial returner, an address shared by 6 customers, 3 duplicates,
2 orders refunded beyond their amount) in place of clean ones. The planted ones must be
flagged exactly as ``PLANTED_FLAGS`` says (12 flagged requests), and no other request may be.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from collections.abc import Iterable
from decimal import Decimal

import pytest

import refundry
from refundry.cli import main
from refundry.records.history import History, enrich
from tests import fraudgen

from .conftest import RULESETS, make_request

N = 300


def fraud_rules(decision: refundry.Decision) -> set[str]:
    return {r.rule_id for r in decision.reasons if r.rule_id.startswith("fraud-")}


def replay_history(store, engine, requests: Iterable[dict]) -> dict[str, set[str]]:
    """Enrich, evaluate and record each request in order, as a service would."""
    history = History(store)
    flagged = {}
    for request in requests:
        data = {**request, "facts": {**request.get("facts", {}), **(history.facts(request) or {})}}
        decision = engine.evaluate(data)
        store.record(data, decision, engine=engine, actor="shop")
        if fraud_rules(decision):
            flagged[request["request_id"]] = fraud_rules(decision)
    return flagged


def test_the_planted_abuse_is_flagged_and_nothing_else(store, engine) -> None:
    requests = fraudgen.abusive(N)
    assert len(requests) == N
    flagged = replay_history(store, engine, requests)
    assert flagged == fraudgen.PLANTED_FLAGS
    assert len(flagged) == 12


def test_a_clean_history_of_the_same_size_has_no_flags(store, engine) -> None:
    requests = fraudgen.clean(N)
    flagged = replay_history(store, engine, requests)
    assert flagged == {}
    # the facts were there all along, so "no flag" is not "no data"
    facts = History(store).facts(requests[-1])
    assert facts is not None and facts["anomaly"]["baseline"] >= 100
    assert facts["history"]["requests_by_customer_30d"] >= 1


def test_the_facts_name_what_they_count(store, engine) -> None:
    base = fraudgen.request("a", fraudgen._at(1), "cust-1", amount=Decimal("40.00"),
                            txn_amount=Decimal("100.00"), txn="order-1",
                            address="Same Street 1", last4="1234")
    other = fraudgen.request("b", fraudgen._at(2), "cust-2", amount=Decimal("40.00"),
                             txn_amount=Decimal("100.00"), txn="order-1",
                             address="same  street 1", last4="1234", currency="USD")
    replay_history(store, engine, [base])
    facts = enrich(store, other)["facts"]  # the library's one-call form
    h = facts["history"]
    assert h["requests_by_customer_30d"] == 1       # cust-2 asks for the first time
    assert h["requests_by_address_30d"] == 2         # normalised: case and spaces ignored
    assert h["customers_by_address_30d"] == 2
    assert h["customers_by_card_30d"] == 2
    assert h["requests_for_transaction"] == 1
    assert h["same_amount_requests"] == 1
    assert h["refunded_for_transaction"] == "40.00"  # approved under the statutory rule
    assert h["refunds_exceed_original"] is False     # 40 + 40 <= 100
    assert h["currency_differs"] is True
    assert "anomaly" not in facts                    # one earlier request is no baseline


def test_a_denied_refund_does_not_count_against_the_original(store, engine) -> None:
    first = fraudgen.request("big", fraudgen._at(1), "cust-1", amount=Decimal("80.00"),
                             txn_amount=Decimal("100.00"), txn="order-9")
    first["client_id"] = "acme"  # acme-eu sends refunds above 500 to review; raise it over
    first["amount"] = first["transaction"]["amount"] = "600.00"
    replay_history(store, engine, [first])
    store.review("big", actor="bob", approve=False, reason="no receipt")
    again = {**first, "request_id": "big-2", "amount": "100.00"}
    h = History(store).facts(again)["history"]
    assert h["refunded_for_transaction"] == "0" and h["pending_for_transaction"] == "0"
    assert h["refunds_exceed_original"] is False


def test_the_index_keeps_pseudonyms_not_emails_or_addresses(store, engine, store_url) -> None:
    replay_history(store, engine, fraudgen.planted())
    history = History(store)
    history.sync()  # the last record is indexed by the next lookup; do it now
    rows = history._read("SELECT * FROM history_index")
    text = json.dumps([list(map(str, r)) for r in rows])
    assert len(rows) == len(fraudgen.planted())
    # A pseudonym is random hex under the store's salt and holds "1111" about one store in
    # seven; what must not be there is the clear value, so the pseudonyms' hex is left out.
    text = re.sub(r"\b(customer|email|address|card|txn)-[0-9a-f]{24}", r"\1-", text)
    # the email pseudonym keeps the domain (docs/records.md, Masking), never the local part
    for clear in ("cust-serial@", "Packstation", "Street", "cust-serial", "order-dup", "1111"):
        assert clear not in text
    assert "address-" in text and "email-" in text


def test_facts_are_recorded_with_the_request_and_replay_the_same(store, engine) -> None:
    requests = [r for r in fraudgen.planted() if r["request_id"].startswith("serial-")]
    replay_history(store, engine, requests)
    case = store.case("serial-7")
    assert case.request["facts"]["history"]["requests_by_customer_30d"] == 8
    assert store.replay("serial-7").same
    assert store.verify().ok


def test_the_same_store_gives_the_same_facts(store, engine) -> None:
    requests = fraudgen.abusive(60)
    replay_history(store, engine, requests[:-1])
    one, two = History(store).facts(requests[-1]), History(store).facts(requests[-1])
    assert one == two


def test_an_invalid_request_gets_no_facts(store) -> None:
    assert History(store).facts({"request_id": "x"}) is None


def test_the_index_catches_up_from_the_chain(store, engine, store_url) -> None:
    replay_history(store, engine, fraudgen.planted()[:5])
    # a second process (here: a second store object) sees what the first recorded
    other = refundry.open_store(store_url)
    try:
        h = History(other)
        assert h.sync() == 0 or h.watermark() == store.checkpoint().count
        assert len(h._read("SELECT request_id FROM history_index")) == 5
    finally:
        other.close()


def test_a_batch_indexes_its_own_events_as_the_chain_does(store, engine) -> None:
    """``sync(appended)``, as the API's committer calls it inside its batch, makes the rows of
    the events it appended from those events; the index is still the one the chain makes
    (verify rebuilds it from the chain and compares), and events it was not given (a note
    appended between two batches) are read from the chain as before."""
    history = History(store)
    history.sync()

    def batch(prefix: str) -> int:
        requests = [make_request(f"{prefix}-{i}") for i in range(3)]
        prepared = [store.prepare(r, engine.evaluate(r), engine=engine, actor="svc")
                    for r in requests]
        with store.batch():
            results = store.record_many(prepared)
            return history.sync([case.events[-1] for case, _created in results])

    assert batch("a") == 3
    assert history.watermark() == store.checkpoint().count
    store.note("a-0", "called the customer", actor="svc")  # not indexed: a gap to read over
    assert batch("b") == 3
    assert history.watermark() == store.checkpoint().count
    assert store.verify().ok
    again = History(store).facts(make_request("c-0"))
    assert again is not None and again["history"]["requests_by_customer_30d"] == 7


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REFUNDRY_DB", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def test_run_with_db_flags_the_planted_abuse(cli, tmp_path, store_url) -> None:
    requests = fraudgen.abusive(120)
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in requests), "utf-8")
    code, _out, err = cli("run", "--source", "jsonl", "--input", "in.jsonl", "--out",
                          "decisions.jsonl", "--db", store_url, "--rulesets", RULESETS)
    assert code == 0, err
    decisions = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    flagged = {d["request_id"]: {r["rule_id"] for r in d["reasons"]
                                 if r["rule_id"].startswith("fraud-")} for d in decisions}
    flagged = {k: v for k, v in flagged.items() if v}
    assert set(flagged) == set(fraudgen.PLANTED_FLAGS)


def test_evaluate_record_sees_the_earlier_request(cli, tmp_path, store_url) -> None:
    first = fraudgen.request("e-1", fraudgen._at(1), "cust-1", amount=Decimal("30.00"),
                             txn="order-e")
    second = {**first, "request_id": "e-2"}
    for r in (first, second):
        (tmp_path / f"{r['request_id']}.json").write_text(json.dumps(r), "utf-8")
    code, out, err = cli("evaluate", "e-1.json", "--record", "--db", store_url, "--rulesets",
                         RULESETS, "--by", "shop")
    assert code == 0, err
    assert json.loads(out)["outcome"] == "approve"
    code, out, err = cli("evaluate", "e-2.json", "--record", "--db", store_url, "--rulesets",
                         RULESETS, "--by", "shop")
    decision = json.loads(out)
    assert code == 0, err
    assert decision["outcome"] == "manual_review"
    assert "fraud-duplicate-request" in {r["rule_id"] for r in decision["reasons"]}


def test_evaluate_without_record_reads_no_store(cli, tmp_path) -> None:
    r = fraudgen.request("e-1", fraudgen._at(1), "cust-1", amount=Decimal("30.00"))
    (tmp_path / "r.json").write_text(json.dumps(r), "utf-8")
    code, _out, _err = cli("evaluate", "r.json", "--rulesets", RULESETS)
    assert code == 0
    assert not (tmp_path / "refundry.db").exists()


def test_sqlite_index_is_used(tmp_path, engine) -> None:
    """The per-request lookups are index searches, not scans (SQLite's own plan)."""
    store = refundry.open_store(tmp_path / "r.db")
    history = History(store)
    history.ensure()
    conn = sqlite3.connect(tmp_path / "r.db")
    for attr in ("customer", "email", "address", "card"):
        plan = conn.execute(
            f"EXPLAIN QUERY PLAN SELECT COUNT(*) FROM history_index WHERE client_id = ? AND "
            f"{attr}_key = ? AND requested_at >= ? AND requested_at <= ?",
            ("a", "b", "c", "d")).fetchall()
        assert "USING INDEX history_" in str(plan) or "USING COVERING INDEX" in str(plan), plan
    store.close()


def test_a_recorded_request_gets_the_facts_it_was_recorded_with(store, engine) -> None:
    """Submitting a request again is the same case: later history must not change it."""
    requests = [r for r in fraudgen.planted() if r["request_id"].startswith("serial-")]
    replay_history(store, engine, requests)
    first = requests[0]
    again = History(store).facts(first)
    assert again == {"history": store.case(first["request_id"]).request["facts"]["history"]}
    data = {**first, "facts": {**first["facts"], **again}}
    case, created = store.record(data, engine.evaluate(data), engine=engine, actor="shop")
    assert not created and case.request_id == first["request_id"]


def test_concurrent_syncs_agree_with_the_chain(store, engine, store_url) -> None:
    """Two processes catching the index up at once: every status ends as the chain says."""
    import threading

    requests = fraudgen.clean(60, seed=3)
    for r in requests:
        r["client_id"], r["amount"] = "acme", "600.00"  # acme-eu: above 500 goes to review
        r["transaction"]["amount"] = "600.00"
        store.record(r, engine.evaluate(r), engine=engine, actor="shop")
    for i, r in enumerate(requests):
        if i % 3 == 0:
            store.review(r["request_id"], actor="bob", approve=False, reason="no")
        elif i % 3 == 1:
            store.review(r["request_id"], actor="bob", approve=True)
            store.review(r["request_id"], actor="carol", approve=True)
            store.mark(r["request_id"], "processed", actor="pay")
    stores = [refundry.open_store(store_url) for _ in range(2)]
    try:
        threads = [threading.Thread(target=History(s).sync) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = dict(History(stores[0])._read("SELECT request_id, status FROM history_index"))
    finally:
        for s in stores:
            s.close()
    assert got == {c.request_id: c.status for c in store.cases()}
    assert set(got.values()) == {"denied", "processed", "manual_review"}


def test_an_invalid_request_with_record_opens_no_store(cli, tmp_path) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"request_id": "x"}), "utf-8")
    code, _out, _err = cli("evaluate", "bad.json", "--record", "--rulesets", RULESETS)
    assert code == 3
    assert not (tmp_path / "refundry.db").exists()


def test_as_of_limits_the_history_seen(store, engine) -> None:
    serial = [r for r in fraudgen.planted() if r["request_id"].startswith("serial-")]
    replay_history(store, engine, serial[:6])
    probe = serial[6]
    seen_all = History(store).facts(probe)["history"]["requests_by_customer_30d"]
    cutoff = dt.datetime.fromisoformat(serial[2]["requested_at"])
    seen_before = History(store).facts(probe, as_of=cutoff)["history"]["requests_by_customer_30d"]
    assert (seen_all, seen_before) == (7, 4)  # six earlier + this one; three by then + this one


def test_a_flooding_customer_costs_a_bounded_read_and_counts_saturate(store, engine) -> None:
    """1,500 earlier requests from one customer on one transaction: a lookup reads at most
    MATCH_CAP rows, so the counts stop at MATCH_CAP + 1 and the flags still fire."""
    from refundry.records.history import COLUMNS, MATCH_CAP, keys_of
    from refundry.records.masking import mask_request

    when = dt.datetime(2024, 5, 20, 12, tzinfo=dt.UTC)
    probe = fraudgen.request("flood-probe", when, "cust-flood", amount=Decimal("10.00"),
                             address="Hausweg 1, Berlin")
    history = History(store)
    history.sync()
    salt = store.salt
    k = keys_of(mask_request(refundry.request_to_dict(refundry.parse_request(probe)), salt), salt)
    rows = []
    for i in range(MATCH_CAP + 500):
        at = (when - dt.timedelta(minutes=i + 1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        row = {"request_id": f"flood-{i}", "seq": 0, "client_id": k.client_id, "requested_at": at,
               "customer_key": k.customer, "email_key": k.email, "address_key": k.address,
               "card_key": k.card, "transaction_key": k.transaction, "amount": "10.00",
               "currency": k.currency, "transaction_amount": str(k.transaction_amount),
               "decided_amount": "10.00", "outcome": "approve", "status": "approved"}
        rows.append(tuple(row[c] for c in COLUMNS))
    history.bulk_insert(rows)
    facts = history.facts(probe)
    assert facts["history"]["requests_by_customer_30d"] == MATCH_CAP + 1
    assert facts["history"]["requests_for_transaction"] == MATCH_CAP
    assert facts["history"]["refunds_exceed_original"] is True


def test_each_key_counts_what_its_facts_say_alone_and_in_a_group(store, engine) -> None:
    """The short window is counted for the customer and the other customers for every other
    key: asked alone (one statement per lookup) and in a group (PostgreSQL's array form from
    eight lookups on), the same numbers."""
    shared = {"email": "shared@mail.example", "address": "Shared Street 1", "last4": "7777"}
    earlier = [
        fraudgen.request("k-1", fraudgen._at(1), "cust-k", amount=Decimal("10.00"), **shared),
        fraudgen.request("k-2", fraudgen._at(20), "cust-k", amount=Decimal("10.00"), **shared),
        fraudgen.request("j-1", fraudgen._at(21), "cust-j", amount=Decimal("10.00"), **shared),
        fraudgen.request("i-1", fraudgen._at(22), "cust-i", amount=Decimal("10.00"), **shared),
    ]
    replay_history(store, engine, earlier)
    asked = fraudgen.request("k-3", fraudgen._at(25), "cust-k", amount=Decimal("10.00"), **shared)
    new = fraudgen.request("n-1", fraudgen._at(25), "cust-n", amount=Decimal("10.00"), **shared)
    fillers = [fraudgen.request(f"f-{i}", fraudgen._at(25), f"cust-f{i}",
                                amount=Decimal("10.00"), last4=f"{5000 + i}") for i in range(8)]
    alone = [History(store).facts(r)["history"] for r in (asked, new)]
    grouped = [f["history"] for f in History(store).facts_each([asked, new, *fillers])[:2]]
    for got in (alone, grouped):
        mine, theirs = got
        assert (mine["requests_by_customer_30d"], mine["requests_by_customer_7d"]) == (3, 2)
        assert (theirs["requests_by_customer_30d"], theirs["requests_by_customer_7d"]) == (1, 1)
        for key in ("email", "address", "card"):
            assert mine[f"requests_by_{key}_30d"] == theirs[f"requests_by_{key}_30d"] == 5
            assert mine[f"customers_by_{key}_30d"] == 3  # cust-k is among the earlier ones
            assert theirs[f"customers_by_{key}_30d"] == 4  # cust-n adds one
