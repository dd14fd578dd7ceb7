"""Time `diff_decisions` over 10,000 generated EU requests (two engines, 20,000 decisions).

    .venv/bin/python bench/diff_10k.py [N]
"""

from __future__ import annotations

import datetime as dt
import random
import sys
import time
from pathlib import Path

from refundry import Engine
from refundry.app.diffing import diff_decisions

ROOT = Path(__file__).resolve().parents[1]


def requests(n: int):
    rng = random.Random(1)
    for i in range(n):
        delivered = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=rng.randrange(525_600))
        requested = delivered + dt.timedelta(minutes=rng.randrange(40 * 1440))
        yield f"line {i + 1}", {
            "request_id": f"b{i}", "client_id": "s", "industry": "ecommerce",
            "jurisdiction": rng.choice(["DE", "FR", "AT"]), "requested_at": requested.isoformat(),
            "amount": "100.00", "currency": "EUR", "reason": "changed_mind", "customer": {"id": "c"},
            "transaction": {"id": "t", "amount": "100.00", "delivered_at": delivered.isoformat()},
            "disclosures": {"withdrawal_info_given": True}, "evidence": {"goods_received_back": True}}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    base = ROOT / "rulesets" / "ecommerce" / "eu-consumer.yaml"
    old = Engine.from_path(base)
    tmp = Path("/tmp/refundry-bench-eu.yaml")
    tmp.write_text(base.read_text().replace("period: 14 days\n    notice: requested_at",
                                            "period: 21 days\n    notice: requested_at"))
    new = Engine.from_path(tmp)
    reqs = list(requests(n))
    start = time.perf_counter()
    report = diff_decisions(old, new, reqs)
    took = time.perf_counter() - start
    print(f"{n} requests, {report.requests * 2} decisions in {took:.2f} s "
          f"({report.requests * 2 / took:,.0f} decisions/s); {len(report.changed)} changed")


if __name__ == "__main__":
    main()
