"""``python -m genoflow.cli``: the same as the ``genoflow`` console script."""

import sys

from genoflow.cli.commands import entry

sys.exit(entry())
