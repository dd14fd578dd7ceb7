"""``record_many``: a group of prepared decisions appended under one hold of the writers'
lock (the service's group commit, the worker's batch) answers each one as ``record`` would."""

from __future__ import annotations

import attrs
import pytest

from refundry.records.events import RecordError

from .conftest import make_request


def _prepared(store, engine, request, actor="svc"):
    return store.prepare(request, engine.evaluate(request), engine=engine, actor=actor)


def test_each_decision_of_a_group_is_answered_as_record_answers_it(store, engine):
    store.record(make_request("old"), engine.evaluate(make_request("old")), engine=engine,
                 actor="svc")
    group = [_prepared(store, engine, make_request("new-1")),
             _prepared(store, engine, make_request("old")),  # a retry: the case there
             _prepared(store, engine, make_request("new-2")),
             _prepared(store, engine, make_request("new-1")),  # twice in one group
             _prepared(store, engine, make_request("old", amount="20"))]  # other content
    with store.batch():
        got = store.record_many(group)
    created = [g[1] if isinstance(g, tuple) else g for g in got]
    assert created[:4] == [True, False, True, False]
    assert isinstance(created[4], RecordError) and "different content" in str(created[4])
    assert got[3][0].events == got[0][0].events  # the one case, not a second
    assert [c.request_id for c in store.cases()] == ["old", "new-1", "new-2"]
    result = store.verify()
    assert result.ok and result.count == 3


def test_a_group_outside_a_batch_commits_by_itself_and_links_to_the_head(store, engine):
    first = store.record_many([_prepared(store, engine, make_request(f"a-{i}"))
                               for i in range(3)])
    store.note("a-0", "seen", actor="rev")  # appended between the groups, by record's path
    second = store.record_many([_prepared(store, engine, make_request(f"b-{i}"))
                                for i in range(2)])
    assert all(isinstance(g, tuple) and g[1] for g in first + second)
    seqs = [e.seq for e in store.events()]
    assert seqs == list(range(1, 7))
    assert store.verify().ok
    assert store.record_many([]) == []


def test_prepare_refuses_what_record_refuses(store, engine):
    request = make_request("x")
    decision = engine.evaluate(make_request("y"))
    with pytest.raises(RecordError, match="the decision is for request"):
        store.prepare(request, decision, engine=engine, actor="svc")
    with pytest.raises(RecordError, match="invalid request"):
        store.prepare({"request_id": "z"}, decision, engine=engine, actor="svc")


def test_a_group_past_one_query_of_keys_still_finds_its_recorded_cases(store, engine):
    """The head and the first MANY_KEYS ids' cases are one read; the ids after them are read
    on their own: a retry among those is answered with its case, not appended again."""
    from refundry.records.events import MANY_KEYS

    store.record(make_request("zz-old"), engine.evaluate(make_request("zz-old")),
                 engine=engine, actor="svc")
    decision = engine.evaluate(make_request("a-0"))
    # The same decision for each new id: what is tested is where the ids fall, not deciding.
    group = [store.prepare(make_request(f"a-{i:04d}"), attrs.evolve(decision,
                                                                   request_id=f"a-{i:04d}"),
                           engine=engine, actor="svc") for i in range(MANY_KEYS)]
    group.append(_prepared(store, engine, make_request("zz-old")))
    with store.batch():
        got = store.record_many(group)
    assert [created for _case, created in got] == [True] * MANY_KEYS + [False]
    assert got[-1][0].request_id == "zz-old" and len(got[-1][0].events) == 1
    assert store.verify().ok and store.checkpoint().count == MANY_KEYS + 1


def test_a_prepared_decision_pickles_to_its_equal_and_records_the_same(store, engine):
    """A worker process of `refundry run --db --workers N` sends each prepared decision to
    the parent in a pickle: what arrives equals what was sent and records as it would have,
    and a draft with nothing encoded crosses whole."""
    import pickle

    from refundry.records.events import Draft

    request = make_request("pickled", customer={"id": "c-\U0001f600 4111 1111 1111 1111",
                                                "email": "Ü@example.com"})
    prepared = store.prepare(request, engine.evaluate(request), engine=engine, actor="svc")
    back = pickle.loads(pickle.dumps(prepared))
    assert back == prepared and back.draft.encoded == prepared.draft.encoded
    plain = Draft("r", "note", "svc", None, None, {"text": "hi"})
    assert pickle.loads(pickle.dumps(plain)) == plain
    case, created = store.record(request, engine.evaluate(request), engine=engine, actor="svc",
                                 prepared=back)
    assert created and case.request == prepared.draft.request and store.verify().ok
