"""``refundry publish``: feed the requests stream from any source plugin.

Each request is scrubbed like a record before it leaves the process (card data, CVVs and the
health codes a source may carry are never written to the broker either) and published with its
``request_id`` as ``Nats-Msg-Id``, so publishing the same file twice inside the broker's
duplicate window adds nothing. A record the source cannot map goes to the dead-letter stream;
context objects are counted; executed refunds (history, never a decision) are counted as not
queued: ``refundry run --db`` records those.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from refundry.app.queue.streams import (
    CONNECT_DEADLINE_S,
    DEFAULT_STREAMS,
    QueueError,
    Streams,
    connect,
    dead_letter,
    ensure_streams,
)
from refundry.plugins.manager import Plugins
from refundry.records.masking import mask_value


@attrs.define
class Published:
    published: int = 0
    duplicates: int = 0
    dead: int = 0
    context: int = 0  # objects a source reads only to enrich others: nothing to decide
    not_queued: int = 0  # executed refunds: history for `refundry run --db`, not requests

    def to_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


async def publish(nats_url: str, source: str, input_path: str | Path, *,
                  streams: Streams = DEFAULT_STREAMS, options: Mapping[str, str] | None = None,
                  plugins: Plugins | None = None,
                  connect_timeout: float = CONNECT_DEADLINE_S) -> Published:
    plugins = plugins or Plugins()
    src = plugins.source(source)
    plugins.check_options(dict(options or {}), src, [])  # before connecting or reading
    path = Path(input_path)
    if not path.exists():
        raise QueueError(f"cannot read `{path}`: no such file")
    nc = await connect(nats_url, "refundry-publish", connect_timeout)
    done = Published()
    try:
        js = nc.jetstream()
        await ensure_streams(js, streams)
        for rec in src.read(path, dict(options or {})):
            if rec.kind == "request" and rec.request is not None:
                await _one(js, streams, mask_value(rec.request), done)
            elif rec.kind == "context":
                done.context += 1
            elif rec.kind == "executed":
                done.not_queued += 1
            else:
                body = json.dumps({"ref": rec.ref, "source": source}).encode()
                await dead_letter(js, streams, body, rec.error or "the source gave no request")
                done.dead += 1
    finally:
        await nc.close()
    return done


async def _one(js: Any, streams: Streams, request: dict[str, Any], done: Published) -> None:
    rid = request.get("request_id")
    headers = {"Nats-Msg-Id": rid} if isinstance(rid, str) and rid else None
    ack = await js.publish(streams.requests_subject, json.dumps(request).encode(),
                           headers=headers)
    if ack.duplicate:
        done.duplicates += 1
    else:
        done.published += 1
