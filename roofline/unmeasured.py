"""What a profile could not measure, and why: the one record every roofline step returns.

A missing driver, Triton, or counter permission must never stop a profile; the step
returns an `Unmeasured` instead of a value, and profile.json lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Unmeasured:
    what: str  # dotted name of the missing value, e.g. "gpu.power_limit_w", "flops.float32_tf32"
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"what": self.what, "reason": self.reason}
