"""What one ``genoflow run`` did with one source md5: its assets, checks and error."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Outcome:
    """What happened to one source md5 in one ``genoflow run``."""

    md5: str
    family: str
    # built | cached | transferred | failed | skipped
    assets: dict[str, str] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    run_id: str | None = None

    @property
    def ok(self) -> bool:
        done = ("built", "cached", "transferred")
        return self.error is None and all(s in done for s in self.assets.values())
