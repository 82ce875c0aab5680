"""One rule for a test whose tool or privilege is missing: skip locally, fail in CI.

CI sets ``GENOFLOW_REQUIRE_TOOLS=1``; there a missing reference tool, server binary or
privilege is a failure, so no test CI relies on can be skipped unseen.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """Skip the test saying ``reason``, or fail it under ``GENOFLOW_REQUIRE_TOOLS=1``."""
    if os.environ.get("GENOFLOW_REQUIRE_TOOLS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)
