"""History from the records store, turned into facts before a request is evaluated.

``evaluate`` does no I/O (docs/architecture.md), so everything a rule may want to know about a
customer's past comes in here, as ``facts.history.*`` and ``facts.anomaly.*`` added to the
request (docs/fraud.md lists every name). The facts are then part of the request: they are
recorded with it and a replay sees the same values.

The lookups read ``history_index``, a table in the records store with one row per recorded
case, keyed by pseudonyms of the attributes (customer, email, address, card, transaction) under
the store's own salt: the clear email or address is never written. The index is derived data:
it is filled from the hash-chained ``events`` (``evaluated`` opens a row, review and payment
events update its status) by ``History.sync``, which runs before every lookup and reads only
the events after its watermark. So any process that records cases keeps it current without a
change to the recording path, and a damaged index can be dropped and rebuilt from the chain.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import attrs

from refundry.core.errors import RefundryError
from refundry.core.models import RefundRequest
from refundry.records.events import Event, MaskedRequest, RecordError, RecordStore
from refundry.records.index import (
    COLUMNS,
    INDEXED_EVENTS,
    KEY_FIELDS,
    Keys,
    Pseudonyms,
    index_row,
    keys_of,
    load_json,
    parse_watermark,
    status_update,
    utc_text,
)
from refundry.records.masking import mask_parsed, pseudonym

WINDOW_DAYS = 30
SHORT_WINDOW_DAYS = 7
BASELINE_DAYS = 30
MIN_BASELINE = 20  # fewer recorded requests than this and no anomaly score is given
BASELINE_ROWS = 20_000  # the most recent rows a baseline reads, so its cost has a ceiling
DRIVER_Z = Decimal(3)  # a feature at or above this robust z is named as a driver
MAD_SCALE = Decimal("1.4826")  # makes the MAD estimate a standard deviation for normal data
BASELINES_KEPT = 1_000  # baselines kept per History; past this the cache starts over
MATCH_CAP = 1000  # rows read per lookup at most; counts above it read as 1,000 (+1)
SYNC_PAGE = 5_000
_PAID = ("approved", "processed", "refunded")

# The client-led indexes of a store made before the key-led ones (``_SCHEMA``).
_OLD_INDEXES = ("customer", "email", "address", "card", "transaction", "client")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS history_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS history_index (
        request_id TEXT PRIMARY KEY, seq BIGINT NOT NULL, client_id TEXT NOT NULL,
        requested_at TEXT NOT NULL, customer_key TEXT NOT NULL, email_key TEXT,
        address_key TEXT, card_key TEXT, transaction_key TEXT NOT NULL, amount TEXT NOT NULL,
        currency TEXT NOT NULL, transaction_amount TEXT NOT NULL, decided_amount TEXT NOT NULL,
        outcome TEXT NOT NULL, status TEXT NOT NULL)""",
    # One index per attribute a lookup starts from, led by that attribute and then the client,
    # requested_at last so a window is a range. No index leads with client_id alone: with one,
    # PostgreSQL's cached (generic) plan for a table with no statistics yet served every lookup
    # through it (equal cost estimates), a scan of the client's whole history kept until the
    # table was analyzed. Led by its key, each lookup has one index that fits.
    "CREATE INDEX IF NOT EXISTS history_customer_client ON history_index "
    "(customer_key, client_id, requested_at)",
    "CREATE INDEX IF NOT EXISTS history_email_client ON history_index "
    "(email_key, client_id, requested_at)",
    "CREATE INDEX IF NOT EXISTS history_transaction_client ON history_index "
    "(transaction_key, client_id, requested_at)",
    # The card and address ones also serve other_clients_flag: the same key at another client.
    "CREATE INDEX IF NOT EXISTS history_card_clients ON history_index "
    "(card_key, client_id, requested_at)",
    "CREATE INDEX IF NOT EXISTS history_address_clients ON history_index "
    "(address_key, client_id, requested_at)",
    # The baselines (``History.baseline``).
    "CREATE INDEX IF NOT EXISTS history_currency_client ON history_index "
    "(currency, client_id, requested_at)",
    # A store made before: its client-led indexes go (the upgrade; a no-op once done).
    *(f"DROP INDEX IF EXISTS history_{name}" for name in _OLD_INDEXES),
)

class ParsedData(dict[str, Any]):
    """A request's data (canonical JSON) with ``request``, the ``RefundRequest`` it parses to
    (None when it does not parse), so that a lookup does not parse it again: ``refundry run``
    parses each request once, before its enrichers. Or, instead, ``keyed``: what a lookup
    needs of it, made by another process (``key_request``; ``request`` is then None).
    ``masked``: the fields of ``request`` a lookup keys, masked under a store's salt
    (``masked_keys``), when the caller records it there: the lookup and the event reuse them."""

    __slots__ = ("keyed", "masked", "request")

    def __init__(self, data: Mapping[str, Any], request: RefundRequest | None,
                 keyed: Keyed | None = None, masked: MaskedRequest | None = None) -> None:
        super().__init__(data)
        self.request = request
        self.keyed = keyed
        self.masked = masked


class HistoryError(RefundryError):
    """The history index cannot be read or written."""


def _mark(value: object) -> int:
    """The index's watermark as stored; a corrupted one stops the lookup in one line (a
    history fact counted from a wrong point would be wrong, not merely missing)."""
    try:
        return parse_watermark(value)
    except ValueError as exc:
        raise HistoryError(str(exc)) from None


# --- robust statistics --------------------------------------------------------------------


def median(values: Sequence[Decimal]) -> Decimal:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@attrs.frozen
class Spread:
    """The median and median absolute deviation of one feature over a baseline."""

    median: Decimal
    mad: Decimal

    @classmethod
    def of(cls, values: Sequence[Decimal]) -> Spread:
        med = median(values)
        return cls(med, median([abs(v - med) for v in values]))

    def z(self, value: Decimal, floor: Decimal) -> Decimal:
        """How many robust standard deviations ``value`` lies above the median.

        The scale is 1.4826 x the MAD, but never below ``floor``: in a history where most
        customers ask once, the MAD of the counts is 0 and any second request would otherwise
        be infinitely unusual.
        """
        return (value - self.median) / max(MAD_SCALE * self.mad, floor)


@attrs.frozen
class Baseline:
    """A client's recent normal, per currency: amounts, requests per customer and customers
    per address over the ``BASELINE_DAYS`` before the request's day. Computed once per day
    and kept, so a request pays for none of the sorting."""

    size: int
    amount: Spread | None
    per_customer: Spread | None
    per_address: Spread | None


# --- the index ----------------------------------------------------------------------------


class History:
    """History lookups against one records store. Build one per store and reuse it: it keeps
    the per-day baselines it has computed."""

    def __init__(self, store: RecordStore, names: Pseudonyms | None = None) -> None:
        self.store = store
        self._ready = False
        self._baselines: dict[tuple[str, str, str], Baseline] = {}
        # A run names each request's customer, card and order twice: to look it up and to
        # index it. ``names``: one memory shared with the Histories that look up what this
        # one indexes (the API's lookups and its committer), for one store.
        self._name = Pseudonyms() if names is None else names
        self._answered: list[_Lookup | None] = []  # what ``facts_many`` last answered

    # -- database access (the store's public query and transaction) --------------------------

    def _read(self, text: str, args: Sequence[Any] = ()) -> list[Any]:
        return self.store.query(text, args)

    def _write(self, statements: Iterable[tuple[str, Sequence[Any] | Sequence[Sequence[Any]], bool]],
               *, watermark: int | None = None) -> bool:
        """Run (sql, args, many) statements in one transaction; with ``watermark``, only if
        the index's watermark is still that (else nothing, and False)."""
        try:
            # The store's writers' transaction, or a savepoint inside the batch
            # `refundry run --db` holds, whose uncommitted events the index then sees.
            with self.store.transaction() as tx:
                if watermark is not None and _mark(tx.execute(
                        "SELECT value FROM history_meta WHERE key = 'seq'")[0][0]) != watermark:
                    return False  # nothing written yet: the empty transaction ends
                for text, args, many in statements:
                    if many:
                        tx.executemany(text, args)
                    else:
                        tx.write(text, args)
        except RecordError as exc:
            raise HistoryError(f"history index: {exc}") from None
        return True

    def ensure(self) -> None:
        """Create the index tables in the store if they are not there yet."""
        if self._ready:
            return
        self._write([(s, (), False) for s in _SCHEMA]
                    + [("INSERT INTO history_meta VALUES ('seq', '0') ON CONFLICT DO NOTHING",
                        (), False)])
        self._ready = True

    def watermark(self) -> int:
        rows = self._read("SELECT value FROM history_meta WHERE key = 'seq'")
        return _mark(rows[0][0]) if rows else 0

    def sync(self, appended: Sequence[Event] = ()) -> int:
        """Bring the index up to the head of the chain; returns the events read.

        ``appended``: events the caller appended in the transaction it still holds (a batch),
        in chain order. When they are exactly what the index lacks, their rows are made from
        these objects: the API's committer and `refundry run --db` had just built each body,
        and reading them back and decoding them was a third of the committer's work per
        decision."""
        self.ensure()
        read = 0
        # Whether the index stopped right before ``appended`` is what ``_apply`` checks
        # anyway, inside its transaction: not asked first (a round trip under the lock).
        after = appended[0].seq - 1 if appended else -1
        if appended and appended[-1].seq == after + len(appended) and self._apply(
                [(e.seq, e.type, e.body) for e in appended if e.type in INDEXED_EVENTS],
                after, appended[-1].seq):
            read, after = len(appended), appended[-1].seq
            if self.store.batch_head() == after:  # the head: nothing after it to read
                return read
        else:
            after = self.watermark()
        types = ", ".join(f"'{t}'" for t in INDEXED_EVENTS)
        while True:
            found = self._read(f"SELECT seq, type, body FROM events WHERE seq > ? AND type IN "
                               f"({types}) ORDER BY seq LIMIT {SYNC_PAGE}", (after,))
            if not found:
                return read
            last = int(found[-1][0])
            if self._apply([(int(q), t, load_json(b)) for q, t, b in found], after, last):
                read += len(found)
                after = last
            else:
                after = self.watermark()

    def _apply(self, rows: Sequence[tuple[int, str, Mapping[str, Any]]], after: int,
               last: int) -> bool:
        """Index ``rows`` (seq, type, decoded body) and move the watermark from ``after`` to
        ``last``; False, with nothing written, if another writer moved it first."""
        inserts, updates = [], []
        salt = self.store.salt
        for seq, type_, body in rows:
            if type_ == "evaluated":
                row = index_row(seq, body, salt, self._name)
                if row is not None:
                    inserts.append(row)
            else:
                update = status_update(type_, body)
                if update is not None:
                    updates.append(update)
        placeholders = ", ".join("?" * len(COLUMNS))
        # Applied only if no other process moved the watermark since it was read: status
        # updates must be applied once, in chain order, or a late writer could put back
        # an older status. A lost race re-reads from where the winner stopped.
        return self._write([
            (f"INSERT INTO history_index ({', '.join(COLUMNS)}) VALUES ({placeholders}) "
             "ON CONFLICT DO NOTHING", inserts, True),
            ("UPDATE history_index SET status = ?, decided_amount = COALESCE(?, "
             "decided_amount) WHERE request_id = ?", updates, True),
            ("UPDATE history_meta SET value = ? WHERE key = 'seq'", (str(last),), False),
        ], watermark=after)

    def bulk_insert(self, rows: Iterable[Sequence[Any]]) -> None:
        """Insert index rows (``COLUMNS`` order) directly: for benchmarks and migrations."""
        self.ensure()
        placeholders = ", ".join("?" * len(COLUMNS))
        self._write([(f"INSERT INTO history_index ({', '.join(COLUMNS)}) VALUES "
                      f"({placeholders}) ON CONFLICT DO NOTHING", list(rows), True)])

    # -- lookups ----------------------------------------------------------------------------

    def facts(self, request: Mapping[str, Any] | Any, as_of: dt.datetime | None = None,
              *, sync: bool = True) -> dict[str, Any] | None:
        """``{"history": {...}, "anomaly": {...}}`` for a request (mapping or RefundRequest),
        or None when the request is not valid (the engine then says why)."""
        lookup = self._lookup(request, as_of)
        if lookup is None:
            return None
        if sync:
            self.sync()
        else:
            self.ensure()
        return self._answers([lookup])[0]

    def facts_each(self, requests: Sequence[Mapping[str, Any] | Any]) -> list[dict[str, Any] | None]:
        """``facts(request, sync=False)`` of every request, looked up together in a few round
        trips. Each answer is the one that request would get asked alone at this moment, not
        seeing the others: for requests decided at the same time (the API's group of
        concurrent requests), where a request recorded earlier is seen once whoever commits
        it has synced the index."""
        self.ensure()
        return self._answers([self._lookup(request, None) for request in requests])

    def facts_many(self, requests: Sequence[Mapping[str, Any] | Any], *,
                   ahead: bool = False) -> list[dict[str, Any] | None]:
        """``facts`` of the longest prefix of ``requests`` that can be looked up together, one
        answer per request of that prefix (at least the first), in a few round trips.

        Request k's answer is what ``facts`` gives it once requests[:k] are recorded: no request
        of the prefix shares a key (request id, customer, email, address, card, transaction)
        with an earlier one, nor needs a client baseline not yet computed whose window holds an
        earlier one, so recording those could not change it. The caller records the prefix and
        asks again for the rest (``refundry run --db``).

        ``ahead``: the requests the previous call answered may not be recorded yet (a caller
        deciding them meanwhile): the prefix also stops at the first request whose answer
        could depend on those, so it may be empty; the caller then records them and asks again.
        """
        self.sync()
        earlier: list[_Lookup | None] = list(self._answered) if ahead else []
        taken = {c for x in earlier if x is not None for c in x.claims}
        lookups: list[_Lookup | None] = []
        for request in requests:
            lookup = self._lookup(request, None)
            if lookup is not None:
                if earlier and self._depends(lookup, taken, earlier):
                    break
                taken.update(lookup.claims)
            lookups.append(lookup)
            earlier.append(lookup)
        self._answered = lookups
        return self._answers(lookups)

    def _lookup(self, request: Mapping[str, Any] | Any, as_of: dt.datetime | None) -> _Lookup | None:
        from refundry.core.request import parse_request

        salt = self.store.salt
        if isinstance(request, ParsedData):
            keyed = request.keyed
            if keyed is None:
                if request.request is None:
                    return None
                masked = request.masked
                return _lookup_of(request.request, salt, self._name, as_of,
                                  masked.masked if masked is not None and masked.salt == salt
                                  and masked.request is request.request else None)
            if as_of is None and keyed.salt == salt:
                self._name.learn(keyed.names)  # indexing the request names the same
                return keyed.lookup
            request = dict(request)  # keyed for another store or instant: keyed again here
        try:
            parsed = parse_request(request)
        except RefundryError:
            return None
        return _lookup_of(parsed, salt, self._name, as_of)

    def _depends(self, lookup: _Lookup, taken: set[str], earlier: Sequence[_Lookup | None]) -> bool:
        """Whether recording ``earlier`` requests could change ``lookup``'s answer: a shared
        key, or a baseline not computed yet whose window holds one of them."""
        if not taken.isdisjoint(lookup.claims):
            return True
        k = lookup.keys
        day = lookup.at[:10]
        # A kept baseline answers the same whenever it is read, unless the cache may be emptied
        # (it is, past BASELINES_KEPT) before this request's turn.
        if ((k.client_id, k.currency, day) in self._baselines
                and len(self._baselines) + len(earlier) < BASELINES_KEPT):
            return False
        start = utc_text(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
                         - dt.timedelta(days=BASELINE_DAYS))
        return any(e is not None and e.keys.client_id == k.client_id
                   and e.keys.currency == k.currency and start <= e.keys.requested_at < day
                   for e in earlier)

    def _answers(self, lookups: Sequence[_Lookup | None]) -> list[dict[str, Any] | None]:
        """The facts of each looked-up request (None for an invalid one), in request order."""
        found = [x for x in lookups if x is not None]
        counts: list[dict[str, tuple[int, ...]]] = [{} for _ in found]
        prior: list[list[Any]] = [[] for _ in found]
        reads = list(self._statements(found))
        for (_sql, _args, first), rows in zip(reads, self.store.query_all(
                [(sql, args) for sql, args, _first in reads]), strict=True):
            for i, name, *values in rows:
                if name == "prior":
                    prior[first + int(i)].append(values)
                else:
                    counts[first + int(i)][name] = tuple(map(int, values))
        answers = iter(self._facts_of(x, c, p) for x, c, p in zip(found, counts, prior, strict=True))
        return [None if x is None else next(answers) for x in lookups]

    def _statements(self, found: Sequence[_Lookup]) -> Iterator[tuple[str, list[Any], int]]:
        """The reads that answer ``found``, each with the number of its first lookup: rows of
        (lookup number within the read, name, values), ``prior`` rows holding a transaction's
        earlier request, every other name four counts."""
        if self.store.dialect == "postgresql" and len(found) >= _ARRAYS_FROM:
            # A group's lookups as arrays: one statement text whatever the group's size, so
            # the server plans it once; the generic UNION ALL of 300 branches took it longer
            # to plan than to run (18 ms a statement, most of a run's time). A lookup or a few
            # (a worker's, the API's per request) stay a short UNION: the array text is too
            # long for psycopg to keep parsed, and its 66 arrays cost more to send than the
            # UNION's planning (a worker's CPU per decision 1.3 -> 1.8 ms, its wall doubled).
            yield from ((sql, args, 0) for sql, args in _ArrayQuery.of(found).statements())
            return
        # Lookups numbered from 0 in each read, not through the group: the reads of a group's
        # parts then have the same text (when their requests have the same keys), which
        # SQLite's statement cache compiles once, not once per part (a 50-lookup read took
        # 4 ms to compile, a third of a 3,000-request run's lookup time).
        for first in range(0, len(found), _PER_QUERY):
            part = found[first:first + _PER_QUERY]
            yield (*_count_query(part), first)
            yield (*_prior_query(part), first)

    def _facts_of(self, lookup: _Lookup, counts: dict[str, tuple[int, ...]],
                  prior: list[Any]) -> dict[str, Any]:
        k, at = lookup.keys, lookup.at
        if counts.pop("recorded")[0]:
            # Already recorded: the same request again must be the same case (request_id is
            # the idempotency key), so it gets the facts it was recorded with, not today's.
            recorded = self.store.case(k.request_id).request.get("facts") or {}
            return {n: recorded[n] for n in ("history", "anomaly") if n in recorded}
        history = _history_facts(counts)
        history.update(_transaction_facts(k, prior, lookup.claimed))
        out: dict[str, Any] = {"history": history}
        anomaly = self._anomaly(k, at, history)
        if anomaly is not None:
            out["anomaly"] = anomaly
        return out

    def baseline(self, client_id: str, currency: str, day: str) -> Baseline:
        """The client's baseline for requests on ``day`` (UTC date), from the days before it
        only, so every request of one day is scored against the same normal."""
        key = (client_id, currency, day)
        found = self._baselines.get(key)
        if found is not None:
            return found
        end = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
        start = utc_text(end - dt.timedelta(days=BASELINE_DAYS))
        rows = self._read(
            "SELECT amount, customer_key, address_key FROM history_index WHERE client_id = ? "
            "AND currency = ? AND requested_at >= ? AND requested_at < ? "
            f"ORDER BY requested_at DESC LIMIT {BASELINE_ROWS}",
            (client_id, currency, start, utc_text(end)))
        per_customer: dict[str, int] = {}
        per_address: dict[str, set[str]] = {}
        for _amount, customer, address in rows:
            per_customer[customer] = per_customer.get(customer, 0) + 1
            if address:
                per_address.setdefault(address, set()).add(customer)
        def spread(values: list[Decimal]) -> Spread | None:
            return Spread.of(values) if values else None

        found = Baseline(len(rows), spread([Decimal(r[0]) for r in rows]),
                         spread([Decimal(v) for v in per_customer.values()]),
                         spread([Decimal(len(v)) for v in per_address.values()]))
        if len(self._baselines) > BASELINES_KEPT:
            self._baselines.clear()
        self._baselines[key] = found
        return found

    def _anomaly(self, k: Keys, at: str, history: Mapping[str, Any]) -> dict[str, Any] | None:
        base = self.baseline(k.client_id, k.currency, at[:10])
        if base.size < MIN_BASELINE or base.amount is None or base.per_customer is None:
            return None
        features = {
            # An amount is unusual relative to the client's own; 5 % of the median is the
            # least spread assumed, so a shop with one price does not flag a cent's difference.
            "amount": base.amount.z(k.amount, max(base.amount.median * Decimal("0.05"),
                                                  Decimal("0.01"))),
            "customer_velocity": base.per_customer.z(
                Decimal(history.get("requests_by_customer_30d", 1)), Decimal(1)),
        }
        if "customers_by_address_30d" in history and base.per_address is not None:
            features["address_sharing"] = base.per_address.z(
                Decimal(history["customers_by_address_30d"]), Decimal(1))
        top = max(max(features.values()), Decimal(0))
        drivers = sorted((n for n, z in features.items() if z >= DRIVER_Z),
                         key=lambda n: -features[n])
        return {
            "score": int(top.to_integral_value(rounding=ROUND_FLOOR)),
            "drivers": drivers,
            "features": {n: str(z.quantize(Decimal("0.01"))) for n, z in features.items()},
            "baseline": base.size,
        }


@attrs.frozen
class _Lookup:
    """One request as the lookups need it: its keys, the instant its windows end at, and
    what its own ``prior_refunds`` claim."""

    keys: Keys
    at: str
    claimed: Decimal

    @property
    def claims(self) -> tuple[str, ...]:
        """The keys whose rows this request's answer reads, and its own row adds to."""
        k = self.keys
        return tuple(v for v in (k.request_id, k.customer, k.email, k.address, k.card,
                                 k.transaction) if v is not None)


def masked_keys(parsed: RefundRequest, salt: bytes) -> MaskedRequest | None:
    """The fields of ``parsed`` its lookup keys (``KEY_FIELDS``), masked under ``salt``: for
    ``ParsedData``, whose lookup and event then mask them once. None if they cannot be."""
    try:
        return MaskedRequest(parsed, salt, mask_parsed(parsed, salt, KEY_FIELDS))
    except RefundryError:
        return None


def _lookup_of(parsed: RefundRequest, salt: bytes, name: Callable[[str, bytes, str], str] | None,
               as_of: dt.datetime | None, masked: Mapping[str, Any] | None = None,
               ) -> _Lookup | None:
    """A parsed request's lookup under ``salt`` (None: it has no keys); ``masked``: its
    ``KEY_FIELDS`` masked under ``salt`` already (``masked_keys``)."""
    from refundry.core.request import request_to_dict

    try:
        # Only what a key is made of is masked: the same keys (masking is value by value),
        # without masking items, notes and evidence twice per request (the store masks the
        # whole request when it records it); masked as its dump would be, without the dump.
        if masked is None:
            masked = mask_parsed(parsed, salt, KEY_FIELDS)
        raw = request_to_dict(parsed, ("prior_refunds",))
    except RefundryError:
        return None
    keys = keys_of(masked, salt, pseudonym if name is None else name)
    at = utc_text(as_of) if as_of is not None else keys.requested_at
    claimed = sum((Decimal(str(p["amount"])) for p in raw.get("prior_refunds") or ()), Decimal(0))
    return _Lookup(keys, at, claimed)


@attrs.frozen
class Keyed:
    """What the lookups need of one request, made where the request is (a worker process of
    ``refundry run``) rather than where the store is: its lookup under the store salt
    ``salt``, or None when it does not parse (``key_request``)."""

    salt: bytes
    lookup: _Lookup | None
    names: tuple[tuple[str, str, str], ...] = ()  # (prefix, value, pseudonym) made for it


def key_request(data: Mapping[str, Any], salt: bytes, name: Pseudonyms | None = None) -> Keyed:
    """``data`` parsed and keyed as ``History`` keys it for a lookup, under ``salt``; handed
    to ``History.facts_many`` in a ``ParsedData``, the lookup uses it (for a store with that
    salt) instead of parsing and keying the request itself, and remembers the pseudonyms
    made for it. ``name``: remembered pseudonyms."""
    from refundry.core.request import parse_request

    try:
        parsed = parse_request(data)
    except RefundryError:
        return Keyed(salt, None)
    made: list[tuple[str, str, str]] = []
    make = pseudonym if name is None else name

    def naming(value: str, salt: bytes, prefix: str) -> str:
        made.append((prefix, value, found := make(value, salt, prefix)))
        return found

    return Keyed(salt, _lookup_of(parsed, salt, naming, None), tuple(made))


# Requests per statement: each adds up to six SELECTs to a UNION ALL, and SQLite allows 500.
_PER_QUERY = 50


def _windows(at: str) -> tuple[str, str]:
    """The starts of the long and the short window ending at ``at``."""
    end = dt.datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    return (utc_text(end - dt.timedelta(days=WINDOW_DAYS)),
            utc_text(end - dt.timedelta(days=SHORT_WINDOW_DAYS)))


# The array form of ``_count_query``, ``_other_clients`` and ``_prior_query`` (PostgreSQL):
# each branch reads one row of ``l`` (a lookup) at a time, by the same index ranges, with the
# same limits, and answers the same rows. The arrays are unnested once per statement, in
# ``WITH l``, and every branch reads that: sent once, not once per branch (psycopg dumped each
# of 66 arrays in Python), and the statement's text short enough for psycopg to keep parsed.
_PG_LOOKUPS = ("WITH l AS (SELECT * FROM unnest(?::bigint[], ?::text[], ?::text[], ?::text[], "
               "?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[]) AS "
               "u(n, request_id, client_id, customer, email, address, card, txn, start_at, "
               "short_at, end_at)) ")
# As in ``_count_query``, only what ``_history_facts`` reads is counted: the short window for
# the customer, the other customers for every other key.
_PG_KEYED = ("SELECT l.n, '{name}', c.* FROM l CROSS JOIN LATERAL (SELECT "
             "COUNT(*), {counted} FROM (SELECT requested_at, customer_key FROM "
             "history_index WHERE client_id = l.client_id AND {name}_key = l.{name} AND "
             "requested_at >= l.start_at AND requested_at <= l.end_at AND request_id <> "
             f"l.request_id ORDER BY requested_at DESC LIMIT {MATCH_CAP}) AS recent) AS c "
             "WHERE l.{name} IS NOT NULL")
_PG_SHORT = "COALESCE(SUM(CASE WHEN requested_at >= l.short_at THEN 1 ELSE 0 END), 0), 0, 0"
_PG_OTHERS = ("0, COUNT(DISTINCT customer_key), COALESCE(MAX(CASE WHEN customer_key = "
              "l.customer THEN 1 ELSE 0 END), 0)")
_PG_OTHER_SIDE = ("SELECT 1 AS hit FROM history_index WHERE {name}_key = l.{name} AND client_id "
                  "{op} l.client_id AND requested_at >= l.start_at AND requested_at <= l.end_at "
                  "AND l.{name} IS NOT NULL LIMIT 1")
_PG_OTHER = ("SELECT l.n, 'other', (SELECT COUNT(*) FROM ("
             + " UNION ALL ".join(f"({_PG_OTHER_SIDE.format(name=name, op=op)})"
                                  for name in ("card", "address") for op in ("<", ">"))
             + ") AS hits), 0, 0, 0 FROM l WHERE l.card IS NOT NULL OR "
             "l.address IS NOT NULL")
_PG_COUNTS = _PG_LOOKUPS + " UNION ALL ".join([
    "SELECT l.n, 'recorded', (SELECT COUNT(*) FROM history_index h WHERE h.request_id = "
    "l.request_id), 0, 0, 0 FROM l",
    *(_PG_KEYED.format(name=name, counted=_PG_SHORT if name == "customer" else _PG_OTHERS)
      for name in ("customer", "email", "address", "card")),
    _PG_OTHER,
])
_PG_PRIOR = (f"{_PG_LOOKUPS}SELECT l.n, 'prior', p.amount, p.currency, p.decided_amount, "
             "p.status FROM l CROSS JOIN LATERAL (SELECT amount, currency, decided_amount, status "
             "FROM history_index WHERE client_id = l.client_id AND transaction_key = l.txn AND "
             "requested_at <= l.end_at AND request_id <> l.request_id ORDER BY requested_at "
             f"DESC LIMIT {MATCH_CAP}) AS p")


_ARRAYS_FROM = 8  # lookups in a group from which they are sent as arrays (``_statements``)


@attrs.frozen
class _ArrayQuery:
    """A group's lookups as the columns of ``_PG_LOOKUPS``."""

    columns: tuple[list[Any], ...]

    @classmethod
    def of(cls, lookups: Sequence[_Lookup]) -> _ArrayQuery:
        columns: tuple[list[Any], ...] = tuple([] for _ in range(11))
        windows: dict[str, tuple[str, str]] = {}
        for n, lookup in enumerate(lookups):
            k, at = lookup.keys, lookup.at
            if at not in windows:
                windows[at] = _windows(at)
            start, short = windows[at]
            for column, value in zip(columns, (n, k.request_id, k.client_id, k.customer, k.email,
                                               k.address, k.card, k.transaction, start, short,
                                               at), strict=True):
                column.append(value)
        return cls(columns)

    def statements(self) -> Iterator[tuple[str, list[Any]]]:
        for text in (_PG_COUNTS, _PG_PRIOR):
            yield text, [*self.columns]


def _count_query(lookups: Sequence[_Lookup]) -> tuple[str, list[Any]]:
    """One statement with the counts of every lookup: whether its request is recorded, and
    per key the requests in the window. Rows are (lookup number, name, four counts)."""
    parts: list[str] = []
    args: list[Any] = []
    windows: dict[str, tuple[str, str]] = {}  # requests of a batch often share their instant
    for n, lookup in enumerate(lookups):
        k, at = lookup.keys, lookup.at
        if at not in windows:
            windows[at] = _windows(at)
        start, short = windows[at]
        parts.append(f"SELECT {n}, 'recorded', COUNT(*), 0, 0, 0 FROM history_index "
                     "WHERE request_id = ?")
        args.append(k.request_id)
        for name, value in (("customer", k.customer), ("email", k.email),
                            ("address", k.address), ("card", k.card)):
            if value is None:
                continue
            # Each branch is a range on its own index.
            # The newest MATCH_CAP rows only: counts saturate there, so one flooding customer
            # costs every later lookup a bounded read, not a scan of everything it sent.
            # Only what ``_history_facts`` reads is counted (the short window for the customer,
            # the other customers for the rest); the rest reads 0: a customer's distinct
            # customers cost SQLite a temporary b-tree per request and said nothing.
            if name == "customer":
                parts.append(f"SELECT {n}, 'customer', COUNT(*), COALESCE(SUM(CASE WHEN "
                             "requested_at >= ? THEN 1 ELSE 0 END), 0), 0, 0 FROM (SELECT "
                             "requested_at FROM history_index WHERE client_id = ? AND "
                             "customer_key = ? AND requested_at >= ? AND requested_at <= ? AND "
                             f"request_id <> ? ORDER BY requested_at DESC LIMIT {MATCH_CAP}) "
                             f"AS recent_customer_{n}")
                args += [short, k.client_id, value, start, at, k.request_id]
                continue
            parts.append(f"SELECT {n}, '{name}', COUNT(*), 0, COUNT(DISTINCT customer_key), "
                         f"COALESCE(MAX(CASE WHEN customer_key = ? THEN 1 ELSE 0 END), 0) FROM "
                         f"(SELECT customer_key FROM history_index WHERE "
                         f"client_id = ? AND {name}_key = ? AND requested_at >= ? AND "
                         f"requested_at <= ? AND request_id <> ? ORDER BY requested_at DESC "
                         f"LIMIT {MATCH_CAP}) AS recent_{name}_{n}")
            args += [k.customer, k.client_id, value, start, at, k.request_id]
        other = _other_clients(k, start, at, n)
        if other is not None:
            parts.append(other[0])
            args += other[1]
    return " UNION ALL ".join(parts), args


def _other_clients(k: Keys, start: str, at: str, n: int) -> tuple[str, list[Any]] | None:
    """The query part (one row, ``other``) saying whether the same card or address (their
    keyed pseudonyms) was in a request to another client in the window. Only this one bit
    crosses from one client to another: no count, no id, nothing of the other client's case
    (docs/fraud.md)."""
    hits, args = [], []
    for name, value in (("card", k.card), ("address", k.address)):
        if value is None:
            continue
        # Two ranges of the (key, client) index, below and above this client: `<>` made
        # the database walk every row of this client's own with the key (a card key is
        # type and last four digits, shared by many of a large client's customers).
        for side, op in (("lo", "<"), ("hi", ">")):
            hits.append(f"SELECT 1 AS hit FROM (SELECT 1 AS hit FROM history_index WHERE "
                        f"{name}_key = ? AND client_id {op} ? AND requested_at >= ? AND "
                        f"requested_at <= ? LIMIT 1) AS other_{name}_{side}")
            args += [value, k.client_id, start, at]
    if not hits:
        return None
    return (f"SELECT {n}, 'other', COUNT(*), 0, 0, 0 FROM ({' UNION ALL '.join(hits)}) "
            f"AS other_{n}"), args


def _prior_query(lookups: Sequence[_Lookup]) -> tuple[str, list[Any]]:
    """One statement with the earlier requests for each lookup's transaction: rows of (lookup
    number, ``prior``, amount, currency, decided amount, status), the newest MATCH_CAP per
    lookup."""
    parts: list[str] = []
    args: list[Any] = []
    for n, lookup in enumerate(lookups):
        k = lookup.keys
        parts.append(f"SELECT {n}, 'prior', amount, currency, decided_amount, status FROM (SELECT amount, "
                     "currency, decided_amount, status FROM history_index WHERE client_id = ? "
                     "AND transaction_key = ? AND requested_at <= ? AND request_id <> ? "
                     f"ORDER BY requested_at DESC LIMIT {MATCH_CAP}) AS prior_{n}")
        args += [k.client_id, k.transaction, lookup.at, k.request_id]
    return " UNION ALL ".join(parts), args


def _history_facts(counts: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """The counting facts from the rows of ``_count_query`` for one request."""
    # Counts include this request: "the 5th request in 30 days" reads as ge: 5.
    out: dict[str, Any] = {"window_days": WINDOW_DAYS}
    for name, (n, n_short, distinct, seen) in counts.items():
        if name == "other":
            continue
        out[f"requests_by_{name}_30d"] = n + 1
        if name == "customer":
            out["requests_by_customer_7d"] = n_short + 1
        else:
            # COUNT(DISTINCT) saw only earlier rows; this request's customer adds one
            # unless it was among them.
            out[f"customers_by_{name}_30d"] = distinct + (0 if seen else 1)
    if "other" in counts:
        out["other_clients_flag"] = counts["other"][0] > 0
    return out


def _transaction_facts(k: Keys, prior: Sequence[Any], claimed: Decimal) -> dict[str, Any]:
    """What the store holds for the request's transaction: earlier requests, what was paid
    and is pending on it, and whether the request's own ``prior_refunds`` claim agrees."""
    paid = sum((Decimal(r[2]) for r in prior if r[3] in _PAID), Decimal(0))
    pending = sum((Decimal(r[2]) for r in prior if r[3] == "manual_review"), Decimal(0))
    # The caller's prior_refunds are a claim; the store knows what it paid on this
    # transaction. Any difference (a refund the caller left out, or one made elsewhere)
    # is for a person to look at (the engine holds such a request for review).
    paid_other_currency = any(r[3] in _PAID and r[1] != k.currency for r in prior)
    return {
        "requests_for_transaction": len(prior),
        "same_amount_requests": sum(1 for r in prior if Decimal(r[0]) == k.amount),
        # Money as text: a recorded request keeps facts as JSON, and a rule compares the
        # flag below, never a float.
        "refunded_for_transaction": str(paid),
        "pending_for_transaction": str(pending),
        "refunds_exceed_original": paid + pending + k.amount > k.transaction_amount,
        "currency_differs": any(r[1] != k.currency for r in prior),
        "prior_refunds_claimed": str(claimed),
        "prior_refunds_disagree": claimed != paid or paid_other_currency,
    }


def enrich(store: RecordStore, request: Mapping[str, Any] | Any,
           as_of: dt.datetime | None = None) -> dict[str, Any]:
    """The request as a dict with ``facts.history`` and ``facts.anomaly`` from ``store`` (they
    replace any the request brought: the store is the witness, not the caller) and
    ``prior_refunds`` at least what the store paid on the transaction."""
    from refundry.core.request import parse_request, request_to_dict

    data = dict(request) if isinstance(request, Mapping) else request_to_dict(parse_request(request))
    return {**data, **store_additions(data, History(store).facts(data, as_of))}


OWNED_FACTS = ("history", "anomaly")


def store_additions(request: Mapping[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the store says about ``request``, as fields that replace the request's own:
    ``facts`` with ``OWNED_FACTS`` set, and ``prior_refunds`` when the store paid more on the
    transaction than the request claims (then a single entry of the store's total; the claim
    and the disagreement stay in ``facts.history``)."""
    if not extra:
        return {}
    facts = {**(request.get("facts") or {}), **{k: extra[k] for k in OWNED_FACTS if k in extra}}
    out: dict[str, Any] = {"facts": facts}
    history = extra.get("history") or {}
    paid = Decimal(str(history.get("refunded_for_transaction", "0")))
    if paid > Decimal(str(history.get("prior_refunds_claimed", "0"))):
        out["prior_refunds"] = [{"amount": str(paid)}]
    return out
