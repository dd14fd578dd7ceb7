"""``python -m refundry.cli``: the same as the ``refundry`` command."""

import sys

from refundry.cli import main

sys.exit(main())
