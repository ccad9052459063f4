"""`top_k auto` in a sweep: price every tree for each draft, then plan the best one per batch size.

For each draft the sweep runs with top_k auto, once per results folder:
1. acceptance, replayed (scylla_impl/calibration.py) on held-out prompts: the last prompts
   of each of the sweep's datasets, never among the first `prompts` the sweep measures.
   A checkpoint folder keeps the table in its calibration.json, keyed by the draft's
   weights, the target, dtype and prompts, so the next sweep with the same draft skips it;
2. costs: the profile's verify latency curve, and the draft's level cost and the step
   overheads measured now, on this device (roofline/tree_costs.py);
3. choices: roofline.tree_policy at each of the sweep's batch sizes, AR included.
Everything lands in OUT/auto_trees.json; a resume plans from it, so it runs the same cells.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.runner import CellWorker, WorkerSettings
from harness.spec import SweepSpec
from roofline import tree_costs
from roofline.latency_curve import verify_curve
from roofline.policy import load_profile
from roofline.tree_policy import StepCosts, TreeChoice, ranked
from scylla_impl import calibration
from scylla_impl.calibration import AcceptanceTable, replay
from workloads.errors import ScyllaError
from workloads.files import atomic_write_bytes

RECORD = "auto_trees.json"
CALIBRATION = "calibration.json"
HELD_OUT_PROMPTS = 24  # over all the sweep's datasets
REPLAY_NEW_TOKENS = 64
KEEP_RANKED = 12  # runners-up kept per batch size in the record, for the report


class AutoTrees:
    """(batch_size, draft spec) -> the tree `top_k auto` runs, from a record (see the module docstring)."""

    def __init__(self, record: dict[str, Any]):
        self.record = record
        self._choices = {(d, int(b)): TreeChoice(**entry["choice"])
                         for d, per in record["drafts"].items() for b, entry in per["batch_sizes"].items()}

    def __call__(self, batch_size: int, draft: str) -> TreeChoice:
        try:
            return self._choices[(draft, batch_size)]
        except KeyError:
            raise ScyllaError(f"top_k auto: no tree was priced for draft {draft!r} at batch size {batch_size}; "
                              f"{RECORD} in the results folder was made for another sweep") from None

    def write(self, out: Path) -> None:
        atomic_write_bytes(json.dumps(self.record, indent=1).encode(), out / RECORD)


def _key(spec: SweepSpec) -> dict[str, Any]:
    return {"profile": str(spec.profile), "batch_sizes": sorted(spec.batch_sizes), "drafts": _auto_drafts(spec),
            "target": spec.target, "dtype": spec.dtype, "device": spec.device, "datasets": list(spec.datasets),
            "prompts": spec.prompts}


def _auto_drafts(spec: SweepSpec) -> list[str]:
    return sorted({d for m in spec.all_methods if m != "ar" for d in spec.draft.get(m, ())})


def sweep_policy(spec: SweepSpec, out: str | Path | None, echo: Callable[[str], None] = print) -> AutoTrees:
    """The auto trees for `spec`: read from OUT/auto_trees.json when it was made for this sweep."""
    if spec.profile is None:
        raise ScyllaError("top_k 'auto' needs a device profile: run `scylla profile --quick --out PROFILE_DIR` "
                          "and pass --profile PROFILE_DIR")
    profile = load_profile(spec.profile)
    try:
        curve = verify_curve(profile.doc, str(profile.path))
    except ValueError as err:
        raise ScyllaError(str(err)) from None
    if out is not None and (Path(out) / RECORD).is_file():
        try:
            record = json.loads((Path(out) / RECORD).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ScyllaError(f"{Path(out) / RECORD}: unreadable ({err}); delete it to price the trees again") from None
        if record.get("key") == _key(spec):
            return AutoTrees(record)
        raise ScyllaError(f"{Path(out) / RECORD} was made for another sweep (profile, batch sizes, drafts or "
                          "datasets differ); write to another --out")
    worker = CellWorker(WorkerSettings.from_spec(spec))
    try:
        target = worker.target()
        knee_dtype = profile.document.knee_dtype
        dtype = str(target.dtype).removeprefix("torch.")
        if knee_dtype and knee_dtype != dtype:
            raise ScyllaError(f"the profile {spec.profile} timed the target in {knee_dtype}, this sweep runs it in "
                              f"{dtype}: profile again with --dtype {dtype}, or sweep with --dtype {knee_dtype}")
        prompts = held_out_prompts(spec, target.tokenizer)
        drafts = {}
        for name in _auto_drafts(spec):
            draft = worker.draft(name)
            table = _acceptance(target, draft, name, dtype, prompts, echo)
            echo(f"auto trees: timing draft {name} levels and step overheads at batch sizes "
                 f"{', '.join(map(str, sorted(spec.batch_sizes)))}")
            costs = tree_costs.measure(target, draft, spec.batch_sizes, widths=tree_costs.LEVEL_WIDTHS)
            drafts[name] = _price(spec, table, curve, costs)
            best = ", ".join(f"b={b}: {TreeChoice(**e['choice']).label()}" for b, e in drafts[name]["batch_sizes"].items())
            echo(f"auto trees for {name}: {best}")
    finally:
        worker.close()
    return AutoTrees({"key": _key(spec), "profile_id": profile.profile_id, "verify_curve": curve.to_json(),
                      "drafts": drafts, "definition": "tokens/s = b(1+a) / (V(b,N) + L(b,1+a) + (D-1) L(b,k) + o_spec(b)); "
                      "AR: b / (V(b,1) + o_ar(b)); see roofline/tree_policy.py"})


def _price(spec: SweepSpec, table: AcceptanceTable, curve, costs: tree_costs.DraftCosts) -> dict[str, Any]:
    step = StepCosts(curve.seconds, costs.level.seconds, _nearest(costs.overhead_ar_s), _nearest(costs.overhead_spec_s))
    trees = [(k, d, n, table.mean_accepted(k, d, n)) for k, d, n in table.trees()]
    per_batch = {}
    for b in sorted(spec.batch_sizes):
        options = ranked(b, trees, step)
        per_batch[str(b)] = {"choice": options[0].to_json(), "ranked": [o.to_json() for o in options[:KEEP_RANKED]],
                             "ar": next(o for o in options if not o.speculative).to_json()}
    return {"acceptance": table.to_json(), "costs": costs.to_json(), "batch_sizes": per_batch}


def _nearest(values: dict[int, float]) -> Callable[[int], float]:
    return lambda b: values[min(values, key=lambda m: abs(m - b))]


def held_out_prompts(spec: SweepSpec, tokenizer) -> list[list[int]]:
    """Token ids of the last prompts of each dataset, none among the first `spec.prompts` the sweep runs."""
    from workloads.chat import prompt_token_ids
    from workloads.datasets import load_dataset

    per = -(-HELD_OUT_PROMPTS // len(spec.datasets))
    ids = []
    for name in spec.datasets:
        everything = load_dataset(name, data_dir=spec.data_dir)
        spare = everything[spec.prompts:]
        ids += [prompt_token_ids(tokenizer, p, system_prompt=spec.system_prompt) for p in spare[-per:]]
    if not ids:
        raise ScyllaError(f"top_k auto needs held-out prompts to measure the draft's acceptance, but the sweep "
                          f"measures every prompt of {', '.join(spec.datasets)}: lower --prompts")
    return ids


def _acceptance(target, draft, name: str, dtype: str, prompts: list[list[int]], echo) -> AcceptanceTable:
    """The draft's acceptance table: from its checkpoint folder's calibration.json, or replayed now."""
    digest = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]
    top_ks, depth = calibration.TOP_KS, calibration.MAX_DEPTH
    # A draft decoding in another precision than the target's (drafts/base.py decode_dtype) says so.
    precision = dtype if draft.info.dtype in (None, dtype) else f"{dtype}-draft-{draft.info.dtype}"
    key = "/".join(map(str, (draft.info.weights_hash, target.info.fingerprint, precision, digest, REPLAY_NEW_TOKENS,
                             ",".join(map(str, top_ks)), depth)))
    folder = Path(name)
    cache = folder / CALIBRATION if (folder / "config.json").is_file() else None
    stored = {}
    if cache is not None and cache.is_file():
        try:
            stored = json.loads(cache.read_text())
            if key in stored:
                return AcceptanceTable.from_json(stored[key])
        except (OSError, json.JSONDecodeError, ScyllaError):
            stored = {}  # a damaged cache is measured again, and rewritten
    echo(f"auto trees: replaying draft {name} on {len(prompts)} held-out prompts ({REPLAY_NEW_TOKENS} tokens each)")
    table = replay(target, draft, prompts, new_tokens=REPLAY_NEW_TOKENS, top_ks=top_ks, max_depth=depth,
                   on_batch=lambda done, total: echo(f"  replayed {done}/{total} prompts"))
    if cache is not None:
        stored[key] = table.to_json()
        try:
            atomic_write_bytes(json.dumps(stored).encode(), cache)
        except (OSError, ScyllaError) as err:  # a read-only checkpoint still runs; it just replays next time
            echo(f"  (could not keep the table in {cache}: {err})")
    return table
