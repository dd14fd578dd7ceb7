"""refundry-ecommerce: Shopify and Stripe sources and sinks for refundry.

Registered through the ``refundry`` entry point group; see ``README.md`` for the options each
source reads and the format each sink writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import refundry
from refundry.plugins import Sink, SinkWriter, Source

from . import shopify, stripe
from .delivery import DELIVERY_OPTIONS


def _shopify_sink(path: Path | None, options: Mapping[str, str]) -> SinkWriter:
    return shopify.RefundCreateWriter(path, options)


def _stripe_sink(path: Path | None, options: Mapping[str, str]) -> SinkWriter:
    return stripe.RefundParamsWriter(path, options)


@refundry.hookimpl
def refundry_sources() -> Sequence[Source]:
    return [
        Source("shopify", shopify.read, "Shopify Admin REST refunds, refunds/calculate "
               "responses, refund transactions and return webhooks (JSON file, JSON lines or a "
               "directory)", shopify.OPTIONS, history=True),
        Source("stripe", stripe.read, "Stripe refund and charge objects (JSON file, list, "
               "JSON lines or a directory)", stripe.OPTIONS, history=True),
    ]


@refundry.hookimpl
def refundry_sinks() -> Sequence[Sink]:
    return [
        Sink("shopify-refund", _shopify_sink, "approved refunds as Shopify refunds to create "
             "(REST body and GraphQL refundCreate input, JSON lines); `deliver=true` sends them",
             [*shopify.SINK_OPTIONS, *DELIVERY_OPTIONS]),
        Sink("stripe-refund", _stripe_sink, "approved refunds as Stripe refund-create params, "
             "amount in minor units (JSON lines); `deliver=true` POSTs them to /v1/refunds",
             DELIVERY_OPTIONS),
    ]
