"""The contract kit: checks a third-party adapter runs in its own test suite.

Like singer-sdk's standard tests, one call gives a pytest test class that checks what refundry
relies on, so a plugin finds out in its own CI, not in a merchant's batch::

    # tests/test_contract.py of refundry-myshop
    from pathlib import Path

    import refundry_myshop
    from refundry.plugins.testing import contract_tests

    HERE = Path(__file__).parent
    TestContract = contract_tests(
        refundry_myshop, name="myshop",
        source="myshop", input=HERE / "data" / "refunds.json",
        options={"client_id": "acme", "jurisdiction": "DE"},
        sink="myshop-ledger")

What is checked (each a test of its own, each failure one line naming the plugin):

- the hooks: the plugin registers with no misspelt hook; ``refundry_sources`` and
  ``refundry_sinks`` return ``Source`` / ``Sink`` objects; every option is a typed ``Option``;
- the source: ``read(path, options)`` takes exactly those two parameters, yields only
  ``SourceRecord``s of the four kinds, the same refs in the same order on a second read, every
  ``request`` valid for ``refundry.parse_request``, every executed refund with its money as a
  decimal string in its currency;
- the sink: ``open(path, options)`` returns a writer with ``write(decision, request, ref)`` and
  ``close()``; writing the same approved decision twice gives the same output as writing it
  once, and it carries the case's idempotency key (``idempotency_key(request_id)``, or at
  least the ``request_id``); a case whose refund is already executed (a ``prior_refunds``
  entry with its ``request_id``) is never written.

The functions (``check_plugin``, ``check_source``, ``check_sink``) can also be called directly;
each raises ``ContractError`` listing every problem.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from refundry.core.errors import InvalidRequest, RefundryError
from refundry.core.models import RefundRequest
from refundry.core.money import minor_units
from refundry.core.request import parse_request
from refundry.plugins.manager import Plugins, make_plugin_manager
from refundry.plugins.types import (
    KINDS,
    Option,
    PluginError,
    Sink,
    Source,
    SourceRecord,
    idempotency_key,
)

# A request any sink can be given: valid, approved, in EUR with cents.
SAMPLE_REQUEST: dict[str, Any] = {
    "request_id": "contract-1", "client_id": "contract", "industry": "ecommerce",
    "jurisdiction": "DE", "requested_at": "2024-04-03T10:00:00+02:00", "amount": "12.34",
    "currency": "EUR", "reason": "defective", "customer": {"id": "cust-1"},
    "transaction": {"id": "order-1", "amount": "50.00",
                    "purchased_at": "2024-03-20T10:00:00+01:00"},
}


class ContractError(RefundryError):
    """What a plugin does against its contract, one line per problem."""

    def __init__(self, plugin: str, problems: list[str]) -> None:
        self.plugin, self.problems = plugin, problems
        super().__init__("\n".join(f"plugin `{plugin}`: {p}" for p in problems))


def check_plugin(plugin: object, *, name: str) -> Plugins:
    """Register ``plugin`` alone (with the built-ins) and check its hooks and what they return;
    returns the ``Plugins`` facade for the other checks."""
    errors: list[PluginError] = []
    plugins = Plugins(make_plugin_manager(entry_points=False, extra=[(name, plugin)],
                                          errors=errors))
    plugins.errors.extend(errors)
    _ = plugins.sources, plugins.sinks
    problems = [str(e).removeprefix(f"plugin `{name}`: ") for e in plugins.errors]
    items: list[Source | Sink] = [*plugins.sources.values(), *plugins.sinks.values()]
    for item in items:
        if item.plugin != name:
            continue
        problems += [f"`{item.name}`: option `{o.name}` has no help text"
                     for o in item.options if isinstance(o, Option) and not o.help.strip()]
    if problems:
        raise ContractError(name, problems)
    return plugins


def check_source(plugins: Plugins, source: str, input_path: Path,
                 options: Mapping[str, str]) -> list[SourceRecord]:
    """Read ``input_path`` twice and check every record; returns the records."""
    src = plugins.source(source)
    problems: list[str] = []
    params = list(inspect.signature(src.read).parameters)
    if len(params) != 2:
        problems.append(f"source `{source}`: read() takes {len(params)} parameters, not "
                        "(path, options)")
    plugins.check_options(dict(options), src, [])
    first = list(src.read(Path(input_path), dict(options)))
    second = list(src.read(Path(input_path), dict(options)))
    if [getattr(r, "ref", None) for r in first] != [getattr(r, "ref", None) for r in second]:
        problems.append(f"source `{source}`: refs differ between two reads of the same input")
    if not first:
        problems.append(f"source `{source}`: read nothing from `{input_path}`")
    for rec in first:
        problems += [f"source `{source}`: {p}" for p in _record_problems(rec)]
    if problems:
        raise ContractError(src.plugin, problems)
    return first


def _record_problems(rec: Any) -> list[str]:
    if not isinstance(rec, SourceRecord):
        return [f"yielded a {type(rec).__name__}, not a SourceRecord"]
    if rec.kind not in KINDS:
        return [f"`{rec.ref}`: kind `{rec.kind}`"]
    if rec.kind == "request":
        try:
            parse_request(rec.request or {}, source=rec.ref)
        except InvalidRequest as exc:
            return [f"`{rec.ref}`: not a valid request: {exc.errors[0]}"]
    if rec.kind == "executed":
        refund = rec.executed
        assert refund is not None
        try:
            amount = Decimal(refund.amount)
            exact = amount == amount.quantize(Decimal(1).scaleb(-minor_units(refund.currency)))
        except (ArithmeticError, KeyError, ValueError):
            exact = False
        if not exact or amount < 0:
            return [f"`{rec.ref}`: executed amount `{refund.amount}` {refund.currency} is not "
                    "a decimal string in the currency's minor unit"]
    if rec.kind == "broken" and (not rec.error or "\n" in rec.error):
        return [f"`{rec.ref}`: a dead letter needs a one-line reason"]
    return []


def check_sink(plugins: Plugins, sink: str, options: Mapping[str, str],
               request: Mapping[str, Any] | None = None) -> str:
    """Write an approved decision once into one temporary output, and twice plus a case
    already refunded into another: both must read the same. Returns what was written."""
    snk = plugins.sink(sink)
    data = dict(request or SAMPLE_REQUEST)
    req = parse_request(data)
    done = parse_request({**data, "request_id": f"{req.request_id}-refunded",
                          "prior_refunds": [{"amount": "1.00",
                                             "request_id": f"{req.request_id}-refunded"}]})
    problems: list[str] = []
    once = _sink_output(snk, options, [req], problems)
    twice = _sink_output(snk, options, [req, req, done], problems)
    key = idempotency_key(req.request_id)
    if not problems and key not in once and req.request_id not in once:
        problems.append(f"sink `{sink}`: its output does not carry the idempotency key `{key}`")
    if not problems and f"{req.request_id}-refunded" in twice:
        problems.append(f"sink `{sink}`: wrote an instruction for a case already refunded")
    elif not problems and once != twice:
        problems.append(f"sink `{sink}`: the same decision written twice is not written once")
    if problems:
        raise ContractError(snk.plugin, problems)
    return once


def _sink_output(snk: Sink, options: Mapping[str, str], requests: list[RefundRequest],
                 problems: list[str]) -> str:
    from refundry.core.models import Decision

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / ("out" if snk.output == "dir" else "out.jsonl")
        writer = snk.open(out, dict(options))
        missing = [n for n in ("write", "close") if not callable(getattr(writer, n, None))]
        if missing:
            problems.append(f"sink `{snk.name}`: the writer has no {missing[0]}()")
            return ""
        for r in requests:
            writer.write(Decision(outcome="approve", amount=r.amount, currency=r.currency,
                                  request_id=r.request_id, as_of=r.requested_at), r, "contract")
        writer.close()
        files = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
        return "".join(p.read_text(encoding="utf-8") for p in files)


def contract_tests(plugin: object, *, name: str, source: str | None = None,
                   input: Path | None = None, options: Mapping[str, str] | None = None,
                   sink: str | None = None, request: Mapping[str, Any] | None = None) -> type:
    """A pytest test class with one test per contract check (see the module docstring)."""
    opts = dict(options or {})

    class ContractTests:
        def test_hooks(self) -> None:
            check_plugin(plugin, name=name)

        def test_source(self) -> None:
            if source is None or input is None:
                import pytest

                pytest.skip("no source given to contract_tests")
            check_source(check_plugin(plugin, name=name), source, input, opts)

        def test_sink(self) -> None:
            if sink is None:
                import pytest

                pytest.skip("no sink given to contract_tests")
            check_sink(check_plugin(plugin, name=name), sink, opts, request)

    ContractTests.__name__ = ContractTests.__qualname__ = f"Contract_{name}"
    return ContractTests
