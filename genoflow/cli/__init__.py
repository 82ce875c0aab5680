"""The ``genoflow`` command line: its commands (:mod:`.commands`) and their reports
(:mod:`.report`).

``genoflow`` (the console script) calls :func:`entry`; ``python -m genoflow.cli`` does the same.
"""

from genoflow.cli.commands import entry, main

__all__ = ["entry", "main"]
