"""refundry-finance: Stripe disputes, ISO 20022 returns/investigations and card-dispute CSVs in;
pacs.004 payment returns out.

Registered through the ``refundry`` entry point group; ``README.md`` lists the options, the CSV
columns and what each payload becomes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import refundry
from refundry.plugins import Option, Sink, SinkWriter, Source

from . import disputes, iso20022


def _pacs004_sink(path: Path | None, options: Mapping[str, str]) -> SinkWriter:
    return iso20022.Pacs004Writer(path, options)


@refundry.hookimpl
def refundry_sources() -> Sequence[Source]:
    return [
        Source("stripe-dispute", disputes.read_stripe, "Stripe dispute and issuing.dispute "
               "objects (charges in the same input add amount and card)", disputes.DISPUTE_OPTIONS),
        Source("iso20022", iso20022.read, "ISO 20022 pacs.004 returns and camt.029 resolutions, "
               "checked against pacs.008 originals; an XML file or a directory", iso20022.OPTIONS,
               history=True),
        Source("card-dispute-csv", disputes.read_csv, "a CSV of card disputes, one per row "
               "(columns in the README)", disputes.CSV_OPTIONS),
    ]


@refundry.hookimpl
def refundry_sinks() -> Sequence[Sink]:
    return [Sink("pacs004", _pacs004_sink, "approved refunds as ISO 20022 pacs.004.001.10 "
                 "PaymentReturn messages, one file each in the --out directory",
                 [Option("settlement_method", default="CLRG", help="GrpHdr/SttlmInf/SttlmMtd")],
                 output="dir")]
