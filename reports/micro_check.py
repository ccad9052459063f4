"""The bench's micro-benchmarks (pytest-benchmark JSON) against their committed baseline.

Their figures are absolute times, so they compare only on the kind of machine that made the
baseline: the same CPU (vendor, family, model), core count, instruction sets that pick the
kernels (regression.ISA_FLAGS) and decode precision. A 2-core AMX Xeon runs the embedded
target's AR step in 26.4 ms where the baseline's AVX512-BF16 EPYC took 12.7 (bf16; the Xeon is
slower per op, and faster on many-row matmuls): across machines a time says nothing about a
regression, so there the comparison is shown and not checked. On the same kind of machine the
fastest round (min, the figure least disturbed by other processes) may take at most
MICRO_SLOWDOWN times the baseline's.
"""

from __future__ import annotations

import json
from pathlib import Path

from reports.regression import ISA_FLAGS, Verdict
from workloads.errors import ScyllaError

MICRO_SLOWDOWN = 2.0


def read_micro(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
        return {"machine": doc["machine_info"], "benchmarks": {b["name"]: b for b in doc["benchmarks"]}}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ScyllaError(f"cannot read micro-benchmark results {path}: {' '.join(str(err).split())}") from None


def machine_kind(micro: dict) -> dict:
    """What decides a micro-benchmark's time besides the code: the CPU, its cores and kernels,
    and the precision and threads the benchmarks ran in (recorded per benchmark; absent from
    files written before they were)."""
    cpu = micro["machine"].get("cpu", {})
    extra = {k: v for b in micro["benchmarks"].values() for k, v in (b.get("extra_info") or {}).items()}
    return {"cpu": f"{cpu.get('vendor_id_raw')} family {cpu.get('family')} model {cpu.get('model')}",
            "cores": cpu.get("count"), "isa": " ".join(f for f in ISA_FLAGS if f in cpu.get("flags", [])),
            **{k: extra[k] for k in ("dtype", "threads") if k in extra}}


def compare_micro(now: dict, base: dict) -> Verdict:
    """One failure per benchmark slower than MICRO_SLOWDOWN x its baseline (same machine kind
    only); notes with every benchmark's fastest round against the baseline's."""
    v = Verdict()
    here, there = machine_kind(now), machine_kind(base)
    differ = {k: (there.get(k), here.get(k)) for k in here.keys() & there.keys() if here[k] != there[k]}
    lines = []
    for name, b in sorted(base["benchmarks"].items()):
        if name not in now["benchmarks"]:
            v.failures.append(f"micro-benchmark {name}: missing from this run")
            continue
        t_now, t_base = now["benchmarks"][name]["stats"]["min"], b["stats"]["min"]
        lines.append(f"{name} {t_now * 1e3:.1f} ms ({t_now / t_base:.2f}x)")
        if not differ and t_now > MICRO_SLOWDOWN * t_base:
            v.failures.append(f"micro-benchmark {name}: fastest round {t_now * 1e3:.1f} ms against {t_base * 1e3:.1f} ms "
                              f"in the baseline ({t_now / t_base:.2f}x; at most {MICRO_SLOWDOWN:g}x)")
    if differ:
        v.notes.append("micro-benchmarks not checked: the baseline ran on another kind of machine ("
                       + "; ".join(f"{k} {a} -> {b}" for k, (a, b) in sorted(differ.items()))
                       + "); against it: " + ", ".join(lines) + " (refresh it here with --update-baseline to check them)")
    else:
        v.notes.append("micro-benchmarks against the baseline: " + ", ".join(lines))
    return v
