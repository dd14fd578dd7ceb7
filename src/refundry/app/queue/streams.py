"""The JetStream streams refundry uses, all named from one prefix (default ``REFUNDRY``) so that
several deployments, or several test runs, can share one broker without meeting:

- ``<P>_REQUESTS`` (subject ``<p>.requests``): a work queue. Each message is one canonical
  request, its ``Nats-Msg-Id`` the request id, so a re-published request inside the duplicate
  window is dropped by the broker; a message leaves the stream when a worker acks it, which it
  does only after the decision is committed to the store.
- ``<P>_DECISIONS`` (``<p>.decisions.<outcome>``): each decision, for sinks to consume, again
  with the request id as ``Nats-Msg-Id``, so a redelivered request publishes it once.
- ``<P>_DEAD`` (``<p>.dead``): what could not be decided (not JSON, not a valid request, a
  ``request_id`` already recorded with other content, or failing every delivery), with the
  reason in the ``Refundry-Reason`` header and the original payload as the body.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import attrs

from refundry.core.errors import RefundryError

DUPLICATE_WINDOW_S = 3600.0
ACK_WAIT_S = 30.0
MAX_DELIVER = 5
CONNECT_DEADLINE_S = 10.0
REASON_HEADER = "Refundry-Reason"
LOG = logging.getLogger("refundry.queue")
_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,40}$")


class QueueError(RefundryError):
    """The broker cannot be reached or refused a stream or a message."""


def _prefix(_instance: Any, _attribute: Any, value: str) -> None:
    if not _PREFIX.match(value):
        raise QueueError(f"stream prefix `{value[:60]}` must be a letter then letters, digits, "
                         "`_` or `-`")


@attrs.frozen
class Streams:
    prefix: str = attrs.field(default="REFUNDRY", validator=_prefix)

    @property
    def requests(self) -> str:
        return f"{self.prefix.upper()}_REQUESTS"

    @property
    def requests_subject(self) -> str:
        return f"{self.prefix.lower()}.requests"

    @property
    def decisions(self) -> str:
        return f"{self.prefix.upper()}_DECISIONS"

    def decision_subject(self, outcome: str) -> str:
        return f"{self.prefix.lower()}.decisions.{outcome}"

    @property
    def dead(self) -> str:
        return f"{self.prefix.upper()}_DEAD"

    @property
    def dead_subject(self) -> str:
        return f"{self.prefix.lower()}.dead"

    @property
    def consumer(self) -> str:
        return f"{self.prefix.upper()}_WORKERS"


async def _broker_error(exc: Exception) -> None:
    # One line, not the client's traceback: a broker away is an expected state here.
    LOG.warning("nats", extra={"fields": {"error": f"{type(exc).__name__}: {exc}"[:300]}})


async def _disconnected() -> None:
    LOG.warning("nats disconnected; reconnecting")


async def _reconnected() -> None:
    LOG.info("nats reconnected")


async def connect(url: str, name: str, deadline: float = CONNECT_DEADLINE_S) -> Any:
    import nats

    try:
        # Once connected, reconnect for ever: a broker restart pauses the workers, it does not
        # stop them. The first connection has a deadline, so a wrong URL is an error.
        return await asyncio.wait_for(
            nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                         connect_timeout=5, allow_reconnect=True, error_cb=_broker_error,
                         disconnected_cb=_disconnected, reconnected_cb=_reconnected),
            deadline)
    except TimeoutError:
        raise QueueError(f"cannot connect to nats at `{url}`: no answer within "
                         f"{deadline:g} s") from None
    except Exception as exc:  # noqa: BLE001 - nats raises several unrelated types here
        raise QueueError(f"cannot connect to nats at `{url}`: {exc or type(exc).__name__}") from None


async def ensure_streams(js: Any, streams: Streams) -> None:
    """Create the three streams if missing (idempotent; safe from many processes at once)."""
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    configs = [
        StreamConfig(name=streams.requests, subjects=[streams.requests_subject],
                     retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                     duplicate_window=DUPLICATE_WINDOW_S),
        StreamConfig(name=streams.decisions, subjects=[streams.decision_subject(">")],
                     storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S),
        StreamConfig(name=streams.dead, subjects=[streams.dead_subject],
                     storage=StorageType.FILE),
    ]
    for config in configs:
        try:
            await js.add_stream(config)
        except Exception as exc:  # noqa: BLE001
            if "already in use" not in str(exc):
                raise QueueError(f"cannot create stream `{config.name}`: {exc}") from None


async def dead_letter(js: Any, streams: Streams, payload: bytes, reason: str,
                      msg_id: str | None = None) -> None:
    headers = {REASON_HEADER: " ".join(reason.split())[:2000]}
    if msg_id:
        headers["Nats-Msg-Id"] = "dead:" + msg_id
    await js.publish(streams.dead_subject, payload, headers=headers)


DEFAULT_STREAMS = Streams()
