"""refundry-healthcare: HL7 FHIR R4 and X12 835 sources, a FHIR R4 sink.

Registered through the ``refundry`` entry point group; ``README.md`` lists the options and
what each payload becomes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import refundry
from refundry.plugins import Sink, SinkWriter, Source

from . import fhir, x12


def _fhir_sink(path: Path | None, options: Mapping[str, str]) -> SinkWriter:
    return fhir.PaymentReconciliationWriter(path)


@refundry.hookimpl
def refundry_sources() -> Sequence[Source]:
    return [
        Source("fhir", fhir.read, "HL7 FHIR R4 PaymentReconciliation (negative/advance lines) "
               "and ClaimResponse (payment adjustments, paid above benefit); JSON, NDJSON, "
               "Bundles or a directory", fhir.OPTIONS, history=True),
        Source("x12-835", x12.read, "ASC X12 835 remittance: claim reversals (CLP02 22) and "
               "PLB WO/72 adjustments, any delimiters; a file or a directory", x12.OPTIONS),
    ]


@refundry.hookimpl
def refundry_sinks() -> Sequence[Sink]:
    return [Sink("fhir-payment-reconciliation", _fhir_sink, "approved refunds as FHIR R4 "
                 "PaymentReconciliation resources (NDJSON)")]
