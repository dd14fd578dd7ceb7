"""The review queue as the store reads it: one keyset page at a time, in SQL, on SQLite and
PostgreSQL alike (the console's queue page is this query)."""

from __future__ import annotations

from refundry.records.stores import open_store

from .conftest import make_request


def _ids(page):
    return [c.request_id for c in page.cases]


def test_pages_filters_and_counts_only_the_cases_still_waiting(store_url, engine):
    with open_store(store_url) as store:
        waiting = []
        with store.batch():
            for i in range(23):
                big = i % 4 != 3  # every fourth is small: approved at once, never waiting
                req = make_request(f"q-{i:02d}", client_id="acme",
                                   amount="600" if big else "50")
                store.record(req, engine.evaluate(req), engine=engine, actor="shop")
                if big:
                    waiting.append(f"q-{i:02d}")
        store.review("q-00", actor="rev1", approve=False, reason="no receipt")  # denied: leaves
        store.review("q-01", actor="rev1", approve=True)  # one of two: still waiting
        waiting.remove("q-00")

        first = store.review_queue(limit=7)
        assert first.total == len(waiting) == 17 and first.more
        assert _ids(first) == waiting[:7]
        assert first.cases[0].approvals == ("rev1",)
        second = store.review_queue(after=first.last, limit=7)
        third = store.review_queue(after=second.last, limit=7)
        assert _ids(second) == waiting[7:14] and _ids(third) == waiting[14:] and not third.more
        back = store.review_queue(before=third.first, limit=7)
        assert _ids(back) == list(reversed(waiting[7:14])) and back.more

        assert store.review_queue(client="acme", limit=50).total == 17
        assert store.review_queue(client="other", limit=50).total == 0
        assert store.review_queue(industry="healthcare", limit=50).cases == ()
        assert _ids(store.review_queue(request_id="q-05")) == ["q-05"]
        assert _ids(store.review_queue(request_id="q-03")) == []  # approved at once
