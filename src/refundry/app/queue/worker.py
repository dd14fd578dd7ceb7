"""``refundry worker``: decide requests from the JetStream work queue into the shared store.

Each round fetches a batch from a durable pull consumer, decides it in a worker thread (history
facts, evaluation, then every record appended in one store transaction) and only then, for
each message, publishes the decision and acks. A worker killed anywhere before its ack leaves the
message to be redelivered; the store's idempotency by ``request_id`` turns the second delivery
into the case already recorded, and the decision's ``Nats-Msg-Id`` keeps it from reaching the
sinks twice. So: exactly one case per request, whatever dies when.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs

from refundry.app.queue.streams import (
    ACK_WAIT_S,
    CONNECT_DEADLINE_S,
    DEFAULT_STREAMS,
    MAX_DELIVER,
    Streams,
    connect,
    dead_letter,
    ensure_streams,
)
from refundry.app.service.intake import Intake, problems, take
from refundry.app.service.lookups import Lookups
from refundry.app.submissions import recorded_as_submitted
from refundry.core.engine import Engine
from refundry.core.errors import InvalidRequest, RefundryError
from refundry.core.models import json_default
from refundry.core.request import MAX_REQUEST_BYTES, JsonInputError, decode_json
from refundry.records.events import Prepared, RecordError, RecordStore
from refundry.records.history import History
from refundry.records.masking import mask_text, mask_value
from refundry.records.stores import open_store

LOG = logging.getLogger("refundry.worker")


@attrs.frozen
class WorkerConfig:
    nats_url: str
    db: str
    rulesets: tuple[str, ...]
    streams: Streams = DEFAULT_STREAMS
    batch: int = 50
    ack_wait: float = ACK_WAIT_S
    connect_timeout: float = CONNECT_DEADLINE_S
    name: str = attrs.Factory(lambda: f"worker-{socket.gethostname()}-{os.getpid()}")


@attrs.frozen
class Outcome:
    """What became of one message: ``decided`` (publish and ack), ``dead`` (dead-letter and
    ack) or ``retry`` (not acked: the store could not be written)."""

    kind: str
    request_id: str = ""
    decision: Mapping[str, Any] | None = None
    reason: str = ""


@attrs.define
class Stats:
    decided: int = 0
    dead: int = 0
    retried: int = 0


def _masked_payload(payload: bytes) -> bytes:
    """What a dead letter may keep: card data and codes scrubbed, like any record."""
    try:
        value = decode_json(payload, limit=MAX_REQUEST_BYTES)
        return json.dumps(mask_value(value), default=json_default).encode()
    except JsonInputError:
        return mask_text(payload.decode("utf-8", "replace")).encode()


class Decider:
    """The synchronous part: history, evaluation, one store transaction per batch.

    A batch's messages are looked up and evaluated on ``lookups.size`` threads, each with a
    connection of its own, so their lookups' round trips overlap; the batch is then recorded
    by one transaction on ``store``."""

    def __init__(self, engine: Engine, store: RecordStore, actor: str,
                 lookups: Lookups | None = None) -> None:
        self.engine, self.store, self.actor = engine, store, actor
        self.history = History(store)  # synced inside the batch's transaction
        self.lookups = lookups or Lookups.shared(store)
        self._pool = ThreadPoolExecutor(self.lookups.size, thread_name_prefix="refundry-lookup")

    def close(self) -> None:
        self._pool.shutdown()
        self.lookups.close()

    def _prepare(self, payload: bytes) -> tuple[Intake, Any] | Outcome:
        try:
            data = decode_json(payload, limit=MAX_REQUEST_BYTES)
        except JsonInputError as exc:
            return Outcome("dead", reason=f"not json: the message {exc}")
        if not isinstance(data, dict):
            return Outcome("dead", reason="not a json object (a refund request)")
        try:
            # The index is synced once per batch, in decide(), inside its transaction.
            with self.lookups.history() as history:
                taken = take(data, history)
        except InvalidRequest as exc:
            return Outcome("dead", str(data.get("request_id", ""))[:200],
                           reason="invalid request: " + "; ".join(problems(exc)))
        return taken, self.engine.evaluate(taken.request)

    def decide(self, payloads: Sequence[bytes]) -> list[Outcome]:
        out: list[Outcome | None] = []
        ready: list[tuple[int, Intake, Any, Prepared]] = []
        for i, got in enumerate(self._pool.map(self._prepare, payloads)):
            if isinstance(got, Outcome):
                out.append(got)
                continue
            taken, decision = got
            try:
                # Masked and encoded here, before the batch takes the chain's lock.
                prepared = self.store.prepare(taken.request, decision, engine=self.engine,
                                              actor=self.actor)
            except RecordError as exc:
                out.append(self._refused(taken, decision, exc))
                continue
            out.append(None)
            ready.append((i, taken, decision, prepared))
        for i, outcome in self._record(ready).items():
            out[i] = outcome
        return [o if o is not None else Outcome("retry", reason="not decided") for o in out]

    def _record(self, ready: Sequence[tuple[int, Intake, Any, Prepared]]) -> dict[int, Outcome]:
        """Every prepared decision of the batch appended in one transaction: a commit is a
        disk flush, which costs more here than the whole decision, and the acks wait for it.
        The chain's lock is held meanwhile, for a few round trips (``record_many``), so other
        workers decide their batches while this one records (docs/deployment.md)."""
        try:
            with self.store.batch():
                results = self.store.record_many([p for *_rest, p in ready])
                # Inside the batch: the index rows commit with their events, under one lock.
                self._sync_history()
        except Exception as exc:  # noqa: BLE001 - nothing was written; every one comes back
            return {i: Outcome("retry", taken.request.request_id,
                               reason=f"{type(exc).__name__}: {exc}")
                    for i, taken, _decision, _p in ready}
        out = {}
        for (i, taken, decision, _p), got in zip(ready, results, strict=True):
            if isinstance(got, RecordError):
                out[i] = self._refused(taken, decision, got)
            else:
                case, created = got
                out[i] = Outcome("decided", case.request_id,
                                 decision.to_dict() if created else case.decision)
        return out

    def _sync_history(self) -> None:
        try:
            self.history.sync()
        except RefundryError as exc:  # its savepoint is undone; the next batch catches up
            LOG.warning("history index not synced", extra={"fields": {"error": str(exc)[:300]}})

    def _refused(self, taken: Intake, decision: Any, exc: RecordError) -> Outcome:
        """Refused for good only when the case is there with another submission; the same
        one decided elsewhere at the same moment is that case, and a store that cannot be
        reached or written is tried again."""
        same = recorded_as_submitted(self.store, taken.data)
        if same is not None:
            return Outcome("decided", same.request_id, same.decision)
        try:
            self.store.case(decision.request_id)
        except RefundryError:
            return Outcome("retry", decision.request_id, reason=str(exc))
        return Outcome("dead", decision.request_id, reason=str(exc))


async def _settle(js: Any, streams: Streams, msg: Any, outcome: Outcome, stats: Stats) -> None:
    """Publish what became of ``msg``, then ack it (or leave it for redelivery)."""
    delivered = msg.metadata.num_delivered
    if outcome.kind == "retry" and delivered < MAX_DELIVER:
        stats.retried += 1
        await msg.nak(delay=1.0)
        return
    if outcome.kind == "decided":
        body = json.dumps(outcome.decision, default=json_default).encode()
        outcome_name = str((outcome.decision or {}).get("outcome", "unknown"))
        await js.publish(streams.decision_subject(outcome_name), body,
                         headers={"Nats-Msg-Id": outcome.request_id})
        stats.decided += 1
    else:
        reason = outcome.reason if outcome.kind == "dead" else \
            f"not recorded after {delivered} deliveries: {outcome.reason}"
        await dead_letter(js, streams, _masked_payload(msg.data), reason,
                          f"{outcome.request_id}:{msg.metadata.sequence.stream}")
        LOG.warning("dead letter", extra={"fields": {"request_id": outcome.request_id,
                                                     "reason": reason[:300]}})
        stats.dead += 1
    await msg.ack()


async def run(config: WorkerConfig, stop: asyncio.Event, *, engine: Engine | None = None,
              store: RecordStore | None = None) -> Stats:
    """Consume until ``stop`` is set; the batch in hand is finished first."""
    import nats.errors
    from nats.js.api import AckPolicy, ConsumerConfig

    engine = engine or Engine.from_path(config.rulesets)
    own_store = store is None
    store = store or open_store(config.db, create=True)
    decider = Decider(engine, store, config.name,
                      Lookups(lambda: open_store(config.db, create=False)))
    nc = await connect(config.nats_url, config.name, config.connect_timeout)
    stats = Stats()
    try:
        js = nc.jetstream()
        streams = config.streams
        await ensure_streams(js, streams)
        sub = await js.pull_subscribe(
            streams.requests_subject, durable=streams.consumer, stream=streams.requests,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=config.ack_wait,
                                  max_deliver=MAX_DELIVER, max_ack_pending=-1))
        LOG.info("consuming", extra={"fields": {"stream": streams.requests, "name": config.name}})
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                msgs = await sub.fetch(config.batch, timeout=1)
            except nats.errors.TimeoutError:
                continue
            except Exception as exc:  # noqa: BLE001 - a broker restart: wait and fetch again
                LOG.warning("fetch failed", extra={"fields": {"error": str(exc)[:300]}})
                await asyncio.sleep(0.5)
                continue
            outcomes = await loop.run_in_executor(None, decider.decide, [m.data for m in msgs])
            # All at once: each publish waits for the broker's ack, and one after another they
            # kept the worker from its next batch for a round trip per message. Each message is
            # still acked only after its own decision (or dead letter) is published.
            settled = await asyncio.gather(
                *(_settle(js, streams, msg, outcome, stats)
                  for msg, outcome in zip(msgs, outcomes, strict=True)), return_exceptions=True)
            failed = [r for r in settled if isinstance(r, BaseException)]
            if failed:  # unacked messages come back; idempotent
                LOG.warning("settling failed", extra={"fields": {"error": str(failed[0])[:300],
                                                                 "messages": len(failed)}})
        return stats
    finally:
        LOG.info("stopping", extra={"fields": attrs.asdict(stats)})
        await nc.close()
        decider.close()
        if own_store:
            store.close()
