"""A measured latency surface T(batch, tokens per row), read between and past its points.

Used for the target's verify forward (the profile's knee grid) and the draft's tree level.
Per measured batch size, time is piecewise linear in tokens per row; past the last point
it goes on along the last segment's slope (past the knee that slope is the compute-bound
one), and below the first it stays flat. Between two measured batch sizes it is linear in
the batch size; past the largest it is read at the largest batch size with the same
tokens in flight, since one forward's cost follows the tokens it scores.

A forward over more tokens never costs less, so per batch size the measured medians are
replaced by their closest non-decreasing sequence (least squares, pool adjacent
violators): a noisy dip at 16 tokens must not make a 16-token tree look cheaper than a
chain.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Iterable
from dataclasses import dataclass


def non_decreasing(values: list[float]) -> list[float]:
    """The non-decreasing sequence closest to `values` in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [sum, count] of runs pooled to their mean
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [total / count for total, count in blocks for _ in range(int(count))]


@dataclass(frozen=True)
class LatencyCurve:
    points: dict[int, tuple[tuple[int, float], ...]]  # batch -> ((tokens per row, seconds), ...) sorted

    @classmethod
    def from_points(cls, samples: Iterable[tuple[int, int, float]]) -> LatencyCurve:
        """(batch_size, tokens_per_row, seconds) samples; repeated points keep the median."""
        grouped: dict[int, dict[int, list[float]]] = {}
        for b, n, s in samples:
            if b < 1 or n < 1 or not s > 0:
                raise ValueError(f"a latency point needs batch >= 1, tokens >= 1 and seconds > 0, got {(b, n, s)}")
            grouped.setdefault(int(b), {}).setdefault(int(n), []).append(float(s))
        if not grouped:
            raise ValueError("a latency curve needs at least one point")
        curve = {}
        for b, per in sorted(grouped.items()):
            ns = sorted(per)
            curve[b] = tuple(zip(ns, non_decreasing([statistics.median(per[n]) for n in ns])))
        return cls(curve)

    def _at_batch(self, b: int, n: float) -> float:
        pts = self.points[b]
        if len(pts) == 1 or n <= pts[0][0]:
            return pts[0][1]
        # Segment (i-1, i) holds n; past the last point, the last segment goes on.
        i = min(bisect.bisect_left([p[0] for p in pts], n), len(pts) - 1)
        (n0, s0), (n1, s1) = pts[i - 1], pts[i]
        return s0 + max(0.0, (s1 - s0) / (n1 - n0)) * (n - n0)

    def seconds(self, batch_size: int, tokens_per_row: float) -> float:
        bs = list(self.points)
        if batch_size >= bs[-1]:
            return self._at_batch(bs[-1], tokens_per_row * batch_size / bs[-1])
        if batch_size <= bs[0]:
            return self._at_batch(bs[0], tokens_per_row)
        i = bisect.bisect_left(bs, batch_size)
        if bs[i] == batch_size:
            return self._at_batch(batch_size, tokens_per_row)
        b0, b1 = bs[i - 1], bs[i]
        w = (batch_size - b0) / (b1 - b0)
        return (1 - w) * self._at_batch(b0, tokens_per_row) + w * self._at_batch(b1, tokens_per_row)

    def to_json(self) -> list[dict]:
        return [{"batch_size": b, "tokens": n, "seconds": s} for b, pts in self.points.items() for n, s in pts]

    @classmethod
    def from_json(cls, rows: list[dict]) -> LatencyCurve:
        return cls.from_points((r["batch_size"], r["tokens"], r["seconds"]) for r in rows)


def verify_curve(profile_doc: dict, source: str = "profile") -> LatencyCurve:
    """The target's verify latency curve from a profile.json document."""
    knee = profile_doc.get("knee") if isinstance(profile_doc, dict) else None
    rows = knee.get("points") if isinstance(knee, dict) else None
    if not rows:
        raise ValueError(f"{source} has no verify latency curve (knee.points): make it again with `scylla profile`")
    return LatencyCurve.from_json(rows)
