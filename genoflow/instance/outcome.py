"""What one ``genoflow run`` did with one source md5: its assets, checks and error.

Invariant, one rule for a failed check everywhere: the asset it checks is ``failed`` (even when
its artifact was a cache hit), the check is ``False`` in ``checks``, the error is the check's
message, and the outcome is not ok.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Outcome:
    """What happened to one source md5 in one ``genoflow run``."""

    md5: str
    family: str
    # built | cached | transferred | failed | skipped
    assets: dict[str, str] = field(default_factory=dict)
    # "asset:check" → passed
    checks: dict[str, bool] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    run_id: str | None = None

    @property
    def failed_checks(self) -> list[str]:
        """The ``asset:check`` names of the checks that failed, in the order they ran."""
        return [name for name, passed in self.checks.items() if passed is False]

    @property
    def ok(self) -> bool:
        done = ("built", "cached", "transferred")
        return (
            self.error is None
            and not self.failed_checks
            and all(s in done for s in self.assets.values())
        )
