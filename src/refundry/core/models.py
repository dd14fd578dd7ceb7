"""The value objects refundry works with: requests, decisions, reasons, deadlines.

All are frozen attrs classes. The JSON and YAML shapes stay out of here: ``request.py`` turns the
canonical JSON into a ``RefundRequest``; ``Decision.to_dict`` is the one JSON shape a decision has.
Field metadata (``kind``, ``values``) describes each request field once; the request parser, the
JSON schema generator and the ruleset checker all read it from these classes.
"""

from __future__ import annotations

import copyreg
import datetime as dt
import operator
from decimal import Decimal
from typing import Any

import attrs

Instant = dt.datetime | dt.date
"""A point in time: an aware ``datetime``, or a ``date`` read in the consumer's local time."""

INDUSTRIES = ("ecommerce", "healthcare", "finance")
REASONS = (
    "changed_mind", "defective", "not_as_described", "not_received", "damaged_in_transit",
    "wrong_item", "billing_error", "duplicate_charge", "unauthorized", "overpayment",
    "service_cancelled", "other",
)
OUTCOMES = ("approve", "deny", "manual_review")
EFFECTS = (*OUTCOMES, "adjust")
ITEM_CONDITIONS = ("new", "unopened", "opened", "used", "damaged", "defective", "missing_parts")
DEADLINE_NAMES = (
    "refund_due_by", "return_due_by", "provisional_credit_due_by", "investigation_due_by",
    "acknowledge_by", "resolve_by", "period_ends", "goods_back_by",
)
# The consumer's own last days: several rules giving one, the latest holds (the consumer keeps
# the longest right); every other clock is a business obligation, where the earliest holds.
CONSUMER_CLOCKS = ("period_ends", "goods_back_by")


def json_default(value: Any) -> Any:
    """``json.dumps(..., default=json_default)``: money as decimal strings, times as ISO 8601."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _field(kind: str, *, values: tuple[str, ...] | None = None, required: bool = False,
           model: type | None = None, many: bool = False, doc: str = "") -> Any:
    meta: dict[str, Any] = {"kind": kind, "doc": doc}
    if values is not None:
        meta["values"] = values
    if model is not None:
        meta["model"] = model
    meta["many"] = many
    if required:
        return attrs.field(metadata=meta)
    if many:
        return attrs.field(default=(), metadata=meta)
    return attrs.field(default=None, metadata=meta)


def text(**kw: Any) -> Any:
    return _field("text", **kw)


def money(**kw: Any) -> Any:
    return _field("money", **kw)


def instant(**kw: Any) -> Any:
    return _field("instant", **kw)


def flag(**kw: Any) -> Any:
    return _field("flag", **kw)


def count(**kw: Any) -> Any:
    return _field("count", **kw)


def choice(*values: str, **kw: Any) -> Any:
    return _field("enum", values=values, **kw)


def section(model: type, **kw: Any) -> Any:
    return _field("object", model=model, **kw)


def many(model: type | None = None, kind: str = "object", **kw: Any) -> Any:
    return _field(kind, model=model, many=True, **kw)


@attrs.frozen
class PaymentMethod:
    type: str = text(required=True, doc="card, bank_transfer, paypal, ...")
    last4: str | None = text(doc="last four digits of a card or account; never more")


@attrs.frozen
class Customer:
    id: str = text(required=True)
    address: str | None = text(doc="one normalised line; only as far as fraud checks need it")
    email: str | None = text()


@attrs.frozen
class Transaction:
    id: str = text(required=True)
    amount: Decimal = money(required=True)
    purchased_at: Instant | None = instant()
    delivered_at: Instant | None = instant(doc="delivery of the last item")
    installed_at: Instant | None = instant()
    ship_by: Instant | None = instant(doc="the shipping date stated at sale")
    shipped_at: Instant | None = instant()
    delay_notice_sent: bool | None = flag()
    credit_applied: bool | None = flag(
        doc="the buyer applied to the seller for credit with the order (16 CFR 435.2(a)(1)(ii): "
            "50 days to ship); an extension field")
    shipping_amount: Decimal | None = money()
    express_shipping_amount: Decimal | None = money(doc="only the surcharge above standard delivery")
    repair_requested_at: Instant | None = instant(
        doc="the consumer asked for or agreed to a repair or replacement (CRA s22(6)); an extension field")
    repair_returned_at: Instant | None = instant(
        doc="the consumer received the goods back repaired, or the replacement (CRA s22(7)); an "
            "extension field")
    payment_method: PaymentMethod | None = section(PaymentMethod)


@attrs.frozen
class Item:
    sku: str | None = text()
    quantity: int | None = count()
    unit_price: Decimal | None = money()
    condition: str | None = choice(*ITEM_CONDITIONS)
    failure: str | None = choice("none", "minor", "major")
    final_sale: bool | None = flag()
    personalized: bool | None = flag()
    perishable: bool | None = flag()
    sealed_hygiene_opened: bool | None = flag()
    kind: str | None = choice(
        "goods", "digital_content", "service",
        doc="what the line sells; absent means goods. digital_content: not on a tangible medium "
            "(CRD Art 2(11)); its withdrawal period runs from the contract (Art 9(2)(a), (c))")
    sealed_media_opened: bool | None = flag(
        doc="sealed audio, video or software unsealed after delivery (CRD Art 16(i))")
    dated_leisure: bool | None = flag(
        doc="accommodation, transport, car rental, catering or leisure for a specific date (CRD Art 16(l))")
    urgent_repair: bool | None = flag(
        doc="a visit the consumer asked for to carry out urgent repairs (CRD Art 16(h))")
    motor_vehicle: bool | None = flag(
        doc="a motor vehicle: a use deduction applies from the start (CRA s24(10)(a))")


@attrs.frozen
class PriorRefund:
    amount: Decimal = money(required=True)
    refunded_at: Instant | None = instant()
    request_id: str | None = text()


@attrs.frozen
class Disclosures:
    withdrawal_info_given: bool | None = flag()
    withdrawal_info_given_at: Instant | None = instant(
        doc="when withdrawal information was given late (CRD Art 10(2)); an extension field")
    refund_policy_posted: bool | None = flag()
    refund_policy: str | None = choice(
        "full_refund", "exchange_only", "store_credit", "no_refunds", "no_cash_refunds")
    change_of_mind_policy: bool | None = flag(doc="the business offers change-of-mind returns")
    digital_loss_acknowledged: bool | None = flag(
        doc="the consumer acknowledged losing the right of withdrawal (CRD Art 16(m))")


@attrs.frozen
class Consents:
    other_refund_method: bool | None = flag()
    digital_immediate_performance: bool | None = flag(
        doc="the consumer asked for digital content or a service to start within the withdrawal "
            "period (CRD Art 16(a), (m))")


@attrs.frozen
class Evidence:
    receipt: bool | None = flag()
    original_packaging: bool | None = flag()
    proof_of_dispatch: bool | None = flag()
    goods_received_back: bool | None = flag()
    photos: bool | None = flag()


@attrs.frozen
class Healthcare:
    payer_type: str | None = text()
    provider_type: str | None = text(doc="physician, dentist, hospital, clinic, ...")
    requested_by: str | None = choice("patient", "payer", "provider")
    payment_received_at: Instant | None = instant()
    overpayment_identified_at: Instant | None = instant()
    investigation_started_at: Instant | None = instant()
    investigation_concluded_at: Instant | None = instant(
        doc="a timely good-faith investigation of related overpayments concluded (42 CFR "
            "401.305(b)(2)); an extension field")
    cost_report_due_at: Instant | None = instant()
    amount_due: Decimal | None = money()
    gfe_amount: Decimal | None = money()
    billed_at: Instant | None = instant()
    sent_to_collections_at: Instant | None = instant()
    duplicate_payment_received_at: Instant | None = instant()
    patient_notified_at: Instant | None = instant(
        doc="when the provider told the patient of an overpayment (B&P §732(a)(2)); an extension field")
    credit_balance_requested: bool | None = flag(
        doc="the patient asked to keep an overpayment as a credit balance (B&P §732); an extension field")
    claim_id: str | None = text()
    claim_status_code: str | None = text()
    corrected_claim_received: bool | None = flag()
    recoupment_scheduled: bool | None = flag()
    service_date: Instant | None = instant(doc="sensitive: never stored")
    diagnosis_codes: tuple[str, ...] = many(kind="text", doc="sensitive: never stored")
    procedure_codes: tuple[str, ...] = many(kind="text", doc="sensitive: never stored")


@attrs.frozen
class Finance:
    account_type: str | None = choice("credit_card", "debit_card", "prepaid", "bank_account")
    error_type: str | None = text()
    statement_sent_at: Instant | None = instant()
    notice_received_at: Instant | None = instant()
    notice_form: str | None = choice("written", "oral")
    new_account: bool | None = flag()
    investigation_complete: bool | None = flag()
    loss_learned_at: Instant | None = instant(
        doc="when the consumer learned of the loss or theft of the card or other access device "
            "(12 CFR 1005.6(b)); an extension field")
    written_confirmation_required: bool | None = flag(
        doc="the institution required written confirmation of an oral notice (12 CFR "
            "1005.11(b)(2)); an extension field")
    written_confirmation_received_at: Instant | None = instant(
        doc="when that written confirmation arrived; an extension field")
    investigation_completed_at: Instant | None = instant(
        doc="when the institution finished its Reg E investigation (12 CFR 1005.11(c)(1)); an "
            "extension field")
    point_of_sale: bool | None = flag()
    foreign_initiated: bool | None = flag()
    billing_cycle_closing_day: int | None = count()
    scheme: str | None = text(doc="card_network, sepa_direct_debit, ach, ...")
    card_network: str | None = text()
    debited_at: Instant | None = instant()
    mandate_valid: bool | None = flag()
    fraud_reported: bool | None = flag()
    holidays: tuple[dt.date, ...] = many(kind="date", doc="the institution's own closing days")


@attrs.frozen
class RefundRequest:
    """One refund request in canonical form. Build it with ``refundry.parse_request``."""

    request_id: str = text(required=True)
    client_id: str = text(required=True)
    industry: str = choice(*INDUSTRIES, required=True)
    jurisdiction: str = text(required=True, doc="ISO 3166-1 alpha-2 or ISO 3166-2")
    requested_at: dt.datetime = instant(required=True)
    amount: Decimal = money(required=True)
    currency: str = text(required=True, doc="ISO 4217")
    reason: str = choice(*REASONS, required=True)
    customer: Customer = section(Customer, required=True)
    transaction: Transaction = section(Transaction, required=True)
    timezone: str | None = text(doc="IANA time zone; default from the jurisdiction")
    refund_to: PaymentMethod | None = section(
        PaymentMethod, doc="where the refund goes, as transaction.payment_method (a bare type string "
                           "is accepted); absent: the original means of payment")
    requested_remedy: str | None = choice("refund", "replacement", "repair")
    diminished_value: Decimal | None = money()
    note: str | None = text(doc="free text; masked before it is stored")
    facts: Any = _field("facts", doc="client-specific facts that client rules may name")
    items: tuple[Item, ...] = many(Item)
    prior_refunds: tuple[PriorRefund, ...] = many(PriorRefund)
    disclosures: Disclosures | None = section(Disclosures)
    consents: Consents | None = section(Consents)
    evidence: Evidence | None = section(Evidence)
    healthcare: Healthcare | None = section(Healthcare)
    finance: Finance | None = section(Finance)


# --- decisions -----------------------------------------------------------------------------


@attrs.frozen
class Reason:
    """One rule that matched, as the decision reports it."""

    rule_id: str
    effect: str
    code: str
    message: str
    customer_message: str
    citation: str
    floor: bool = False
    ruleset: str = ""
    # (language, text) pairs when the rule gives its customer_message per language; then
    # ``customer_message`` is the English one (or the first given).
    customer_messages: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = {
            "rule_id": self.rule_id, "effect": self.effect, "code": self.code,
            "message": self.message, "customer_message": self.customer_message,
            "citation": self.citation, "floor": self.floor, "ruleset": self.ruleset,
        }
        if self.customer_messages:
            out["customer_messages"] = dict(self.customer_messages)
        return out


@attrs.frozen
class Deadline:
    """A named statutory clock and the date it runs out (inclusive, consumer's local date)."""

    name: str
    due: dt.date
    citation: str
    rule_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "due": self.due.isoformat(), "citation": self.citation,
                "rule_id": self.rule_id}


@attrs.frozen
class Line:
    """One item line of the request as decided: the order's outcome follows from its lines."""

    sku: str | None
    quantity: int
    outcome: str
    amount: Decimal | None
    rule_ids: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"sku": self.sku, "quantity": self.quantity, "outcome": self.outcome,
                "amount": None if self.amount is None else str(self.amount),
                "rule_ids": list(self.rule_ids)}


@attrs.frozen
class Action:
    """An interim step the law requires while the outcome stays open (Reg E provisional
    credit): the money moves by ``due`` whatever a reviewer later decides."""

    type: str
    amount: Decimal
    due: dt.date | None
    citation: str
    rule_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "amount": str(self.amount),
                "due": self.due.isoformat() if self.due else None, "citation": self.citation,
                "rule_id": self.rule_id}


@attrs.frozen
class Layer:
    id: str
    version: str
    digest: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "version": self.version, "digest": self.digest}


@attrs.frozen
class RulesetRef:
    """The exact ruleset a decision was made with: the top layer's id and version, and a digest
    over the content of every layer it extends, so a replay can prove it used the same rules."""

    id: str
    version: str
    digest: str
    layers: tuple[Layer, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "digest": self.digest,
                "layers": [layer.to_dict() for layer in self.layers]}


@attrs.frozen
class Decision:
    """The engine's answer: the outcome, every rule behind it, the amount and the clocks.

    ``errors`` is non-empty only when the request was invalid or a rule could not be evaluated;
    the outcome is then never ``approve``.
    """

    outcome: str = attrs.field(validator=attrs.validators.in_(OUTCOMES))
    amount: Decimal
    currency: str
    request_id: str
    as_of: dt.datetime | None
    reasons: tuple[Reason, ...] = ()
    deadlines: tuple[Deadline, ...] = ()
    ruleset: RulesetRef | None = None
    errors: tuple[str, ...] = ()
    lines: tuple[Line, ...] = ()
    actions: tuple[Action, ...] = ()

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(r.rule_id for r in self.reasons)

    def deadline(self, name: str) -> dt.date | None:
        for d in self.deadlines:
            if d.name == name:
                return d.due
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (money as a decimal string, dates ISO 8601); valid against
        ``schemas/decision.schema.json``."""
        return {
            "request_id": self.request_id,
            "outcome": self.outcome,
            "amount": str(self.amount),
            "currency": self.currency,
            "reasons": [r.to_dict() for r in self.reasons],
            "deadlines": [d.to_dict() for d in self.deadlines],
            "lines": [line.to_dict() for line in self.lines],
            "actions": [a.to_dict() for a in self.actions],
            "ruleset": self.ruleset.to_dict() if self.ruleset else None,
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "errors": list(self.errors),
        }


def _pickled_by_position(cls: type) -> None:
    """Pickle ``cls`` as its constructor and field values in order: ``run --workers N`` sends
    every request and decision between processes, and attrs' default (a dict of fields, set
    back one by one) cost about 40 % more each way and twice the bytes. Only for a class
    whose ``__init__`` takes every field by position; an instance of a subclass (other fields)
    is pickled the default way."""
    fields = attrs.fields(cls)
    if not fields or any(not f.init or f.kw_only for f in fields):
        return
    names = [f.name for f in fields]
    get = operator.attrgetter(*names)
    one = len(names) == 1

    def __reduce__(self: Any) -> tuple[Any, ...]:
        if type(self) is not cls:
            return copyreg.__newobj__, (type(self),), self.__getstate__()  # type: ignore[attr-defined]
        return cls, ((get(self),) if one else get(self))

    cls.__reduce__ = __reduce__  # type: ignore[assignment,method-assign]


for _model in (PaymentMethod, Customer, Transaction, Item, PriorRefund, Disclosures, Consents,
               Evidence, Healthcare, Finance, RefundRequest, Reason, Deadline, Line, Action,
               Layer, RulesetRef, Decision):
    _pickled_by_position(_model)
del _model
