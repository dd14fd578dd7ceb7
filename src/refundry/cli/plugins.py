"""``refundry plugins``: the installed plugins, their hooks, sources and sinks as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from refundry.plugins.manager import Plugins


def cmd_plugins(args: argparse.Namespace) -> int:
    plugins = Plugins()
    listed = plugins.describe()
    # A broken plugin is one line on stderr (and an `error` in the listing); the rest work.
    for error in plugins.errors:
        print(f"refundry: {error}", file=sys.stderr)
    print(json.dumps(listed, indent=2, ensure_ascii=False))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("plugins", help="list installed plugins, their hooks, sources "
                              "and sinks as JSON")
    p.set_defaults(func=cmd_plugins)
