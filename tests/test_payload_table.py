"""docs/payloads.md stays true: each payload file, read by its source again, gives the record
kinds and dead-letter reasons the table says."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest

from refundry.plugins import Plugins

for adapter in ("refundry_ecommerce", "refundry_finance", "refundry_healthcare"):
    pytest.importorskip(adapter, reason=f"install the adapters ({adapter}) as .ci/run does")

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "shopify": ROOT / "plugins/refundry-ecommerce/tests/payloads/shopify",
    "stripe": ROOT / "plugins/refundry-ecommerce/tests/payloads/stripe",
    "stripe-dispute": ROOT / "plugins/refundry-finance/tests/payloads/stripe",
    "iso20022": ROOT / "plugins/refundry-finance/tests/payloads/iso20022",
    "fhir": ROOT / "plugins/refundry-healthcare/tests/payloads/fhir_r4",
    "x12-835": ROOT / "plugins/refundry-healthcare/tests/payloads/x12_835",
}
OPTIONS = {"client_id": "a", "jurisdiction": "US", "requested_at": "2024-04-03T09:00:00-05:00",
           "originals": str(FOLDERS["iso20022"])}
ROW = re.compile(r"^\| `(?P<folder>[^/`]+)/(?P<file>[^`]+)` \| `(?P<source>[^`]+)` \| (?P<request>\d+) \| "
                 r"(?P<executed>\d+) \| (?P<context>\d+) \| (?P<broken>\d+) \| (?P<why>[^|]*) \|")


def _rows() -> list[dict[str, str]]:
    text = (ROOT / "docs" / "payloads.md").read_text(encoding="utf-8")
    return [m.groupdict() for line in text.splitlines() if (m := ROW.match(line))]


def test_the_table_lists_every_payload_file() -> None:
    listed = {(r["source"], r["file"]) for r in _rows()}
    for source, folder in FOLDERS.items():
        for f in folder.iterdir():
            if f.name != "SOURCE.txt":
                assert (source, f.name) in listed, f"docs/payloads.md misses {source} {f.name}"


@pytest.mark.parametrize("row", _rows(), ids=lambda r: f"{r['source']}:{r['file']}")
def test_each_row_is_what_the_source_reads(row: dict[str, str]) -> None:
    folder = FOLDERS.get(row["source"]) if row["folder"] != "synthetic" else \
        ROOT / "plugins/refundry-healthcare/tests/synthetic"
    assert folder is not None
    source = Plugins().source(row["source"])
    options = {k: v for k, v in OPTIONS.items() if any(o.name == k for o in source.options)}
    recs = list(source.read(folder / row["file"], options))
    kinds = collections.Counter(r.kind for r in recs)
    assert [kinds[k] for k in ("request", "executed", "context", "broken")] == [
        int(row[k]) for k in ("request", "executed", "context", "broken")]
    why = "; ".join(sorted({(r.error or "").split(": ", 1)[-1].replace("|", "/")
                            for r in recs if r.kind == "broken"}))
    assert why == row["why"].strip()
