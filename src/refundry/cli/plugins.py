"""``refundry plugins``: the installed plugins, their hooks, sources and sinks as JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any

from refundry.plugins.manager import Plugins


def cmd_plugins(args: argparse.Namespace) -> int:
    print(json.dumps(Plugins().describe(), indent=2, ensure_ascii=False))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("plugins", help="list installed plugins, their hooks, sources "
                              "and sinks as JSON")
    p.set_defaults(func=cmd_plugins)
