"""`top_k auto` in a sweep: price every tree for each draft, then plan the best one per batch size.

For each draft the sweep runs with top_k auto, once per results folder:
1. acceptance, replayed (scylla_impl/calibration.py) on held-out prompts: the last prompts
   of each of the sweep's datasets, never among the first `prompts` the sweep measures.
   A checkpoint folder keeps the table in its calibration.json, keyed by the draft's
   weights, the target, dtype and prompts, so the next sweep with the same draft skips it;
   prompt lookup's tables live under SCYLLA_HOME/calibration (`calibration_file`);
2. costs: the profile's verify latency curve, and the draft's level cost and the step
   overheads measured now, on this device (roofline/tree_costs.py);
3. choices: roofline.tree_policy at each of the sweep's batch sizes, AR included.
Everything lands in OUT/auto_trees.json; a resume plans from it, so it runs the same cells.

`scylla generate --top-k auto` prices the same way with no sweep and no profile
(`generate_tree`): the held-out prompts of all six datasets (those `nox -s bench` replays,
so a draft it priced is not replayed again), and the verify curve timed now.
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
from roofline.knee import PREFIX_TOKENS, measure_knee
from roofline.latency_curve import LatencyCurve, verify_curve
from roofline.policy import load_profile
from roofline.timing import Timer
from roofline.tree_policy import StepCosts, TreeChoice, ranked
from scylla_impl import calibration
from scylla_impl.calibration import AcceptanceTable, replay
from scylla_impl.methods import TRAINING_FREE
from workloads.cache import scylla_home
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
        prompts = _held_out_or_refuse(spec, target.tokenizer)
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
    per_batch = {}
    for b in sorted(spec.batch_sizes):
        options = _ranked(b, table, curve, costs)
        per_batch[str(b)] = {"choice": options[0].to_json(), "ranked": [o.to_json() for o in options[:KEEP_RANKED]],
                             "ar": next(o for o in options if not o.speculative).to_json()}
    return {"acceptance": table.to_json(), "costs": costs.to_json(), "batch_sizes": per_batch}


def _ranked(b: int, table: AcceptanceTable, curve: LatencyCurve, costs: tree_costs.DraftCosts) -> list[TreeChoice]:
    step = StepCosts(curve.seconds, costs.level.seconds, _nearest(costs.overhead_ar_s), _nearest(costs.overhead_spec_s))
    return ranked(b, [(k, d, n, table.mean_accepted(k, d, n)) for k, d, n in table.trees()], step)


def _nearest(values: dict[int, float]) -> Callable[[int], float]:
    return lambda b: values[min(values, key=lambda m: abs(m - b))]


def held_out_prompts(datasets, skip: int, tokenizer, data_dir=None, system_prompt: str | None = None,
                     longest: int | None = None) -> list[list[int]]:
    """Token ids of the last prompts of each dataset, none among its first `skip`, and none
    longer than `longest` tokens (a target's context less what a replay adds to it)."""
    from workloads.chat import prompt_token_ids
    from workloads.datasets import load_dataset

    per = -(-HELD_OUT_PROMPTS // len(datasets))
    ids = []
    for name in datasets:
        spare = load_dataset(name, data_dir=data_dir)[skip:]
        ids += [prompt_token_ids(tokenizer, p, system_prompt=system_prompt) for p in spare[-per:]]
    return [p for p in ids if longest is None or len(p) <= longest]


def _held_out_or_refuse(spec: SweepSpec, tokenizer) -> list[list[int]]:
    ids = held_out_prompts(spec.datasets, spec.prompts, tokenizer, spec.data_dir, spec.system_prompt)
    if not ids:
        raise ScyllaError(f"top_k auto needs held-out prompts to measure the draft's acceptance, but the sweep "
                          f"measures every prompt of {', '.join(spec.datasets)}: lower --prompts")
    return ids


def generate_tree(target, draft, name: str, batch_size: int, cached_tokens: int = PREFIX_TOKENS,
                  echo: Callable[[str], None] = print) -> tuple[TreeChoice, TreeChoice]:
    """`scylla generate --top-k auto`: (the speculative tree with the most predicted tokens/s for
    `draft` at `batch_size` on this device, AR's prediction beside it). The best tree is returned
    even where AR is predicted faster: the caller asked for speculative decoding, and is told.

    The acceptance is kept where `calibration_file(name)` says (replayed on first use, as a
    sweep does, with no system prompt, as the bench's); the verify curve, draft levels and step
    overheads are timed now, in seconds, over a cache of `cached_tokens` (the decode's own
    length: attention over a long article costs more than over a question)."""
    from workloads.datasets import DATASET_NAMES

    context = target.info.context
    # Room in the target's context for a replayed prompt: its new tokens and a tree past them.
    longest = None if context is None else context - REPLAY_NEW_TOKENS - calibration.MAX_DEPTH - 8
    prompts = held_out_prompts(DATASET_NAMES, 0, target.tokenizer, longest=longest)
    if not prompts:
        raise ScyllaError(f"top_k auto: no held-out prompt fits {target.info.name}'s context of {context} tokens "
                          f"with {REPLAY_NEW_TOKENS} new ones; give --top-k, --depth and --total-tokens")
    dtype = str(target.dtype).removeprefix("torch.")
    table = _acceptance(target, draft, name, dtype, prompts, echo)
    echo("auto tree: timing the target's verify forward, the draft's levels and the step overheads here")
    prefix = cached_tokens if context is None else max(1, min(cached_tokens, context - calibration.MAX_TREE_TOKENS - 8))
    curve = measured_verify_curve(target, batch_size, prefix, None if context is None else context - prefix - 8)
    costs = tree_costs.measure(target, draft, [batch_size], prefix_tokens=prefix, widths=tree_costs.LEVEL_WIDTHS)
    options = _ranked(batch_size, table, curve, costs)
    ar = next(o for o in options if not o.speculative)
    return next((o for o in options if o.speculative), ar), ar


VERIFY_TOKENS = (1, 2, 4, 8, 16, 32, 64, calibration.MAX_TREE_TOKENS)
VERIFY_MAX_IN_FLIGHT = 512  # past this the curve goes on along its last (compute-bound) slope


def measured_verify_curve(target, batch_size: int, prefix_tokens: int, most_tokens: int | None) -> LatencyCurve:
    """V(b, n) at `batch_size`, timed now (the profile's knee, one batch size, three rounds)."""
    tokens = [n for n in VERIFY_TOKENS if (n == 1 or batch_size * n <= VERIFY_MAX_IN_FLIGHT)
              and (most_tokens is None or n <= most_tokens)]
    points, _ = measure_knee(target, [(batch_size, n) for n in tokens], prefix_tokens=prefix_tokens,
                             timer=Timer(target.device, clock="wall"), warmup=1, reps=3)
    return LatencyCurve.from_points((p.batch_size, p.tree_tokens, s) for p in points for s in p.timing.samples_s)


def calibration_file(name: str) -> Path | None:
    """Where draft `name`'s replayed acceptance is kept: its checkpoint folder's calibration.json;
    for a training-free draft (prompt lookup, a function of the target alone) one file under
    SCYLLA_HOME; None for a draft that is neither (random weights, the oracle)."""
    folder = Path(name)
    if (folder / "config.json").is_file():
        return folder / CALIBRATION
    if name in TRAINING_FREE:
        return scylla_home() / "calibration" / f"{name}.json"
    return None


def _acceptance(target, draft, name: str, dtype: str, prompts: list[list[int]], echo) -> AcceptanceTable:
    """The draft's acceptance table: from its checkpoint folder's calibration.json, or replayed now."""
    digest = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]
    top_ks, depth = calibration.TOP_KS, calibration.MAX_DEPTH
    # A draft decoding in another precision than the target's (drafts/base.py decode_dtype) says so.
    precision = dtype if draft.info.dtype in (None, dtype) else f"{dtype}-draft-{draft.info.dtype}"
    key = "/".join(map(str, (draft.info.weights_hash, target.info.fingerprint, precision, digest, REPLAY_NEW_TOKENS,
                             ",".join(map(str, top_ks)), depth)))
    cache = calibration_file(name)
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
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(json.dumps(stored).encode(), cache)
        except (OSError, ScyllaError) as err:  # a read-only checkpoint still runs; it just replays next time
            echo(f"  (could not keep the table in {cache}: {err})")
    return table
