"""`top_k auto` in a sweep: price every tree for each draft and dataset, then plan the best one per batch size.

For each draft the sweep runs with top_k auto, once per results folder:
1. acceptance, replayed (scylla_impl/calibration.py) on held-out prompts of each of the
   sweep's datasets, never among the first `prompts` the sweep measures but of their
   categories (`held_out_indices`), one table per dataset (a chat question and a code
   completion reward different trees).
   A checkpoint folder keeps the tables in its calibration.json, keyed by the draft's
   weights, the target, dtype and each dataset's prompts, so the next sweep with the same
   draft skips them; prompt lookup's tables live under SCYLLA_HOME/calibration
   (`calibration_file`). A method given a lookup chain (`--lookup-tokens METHOD=M`) is priced
   as its own unit, the draft with the chain: its replay counts the chain's copies too, and
   its tables are kept under their own key;
2. costs at each dataset's context per batch size (the longest of b of its held-out prompts,
   expected, and half the new tokens): the profile's verify latency curve where that is near
   the profile's cached prefix, else the curve timed now at that length (attention over a news
   article makes every verified token dearer, and the best tree smaller); the draft's level
   cost and the step overheads measured now, at the same length (roofline/tree_costs.py);
3. choices: roofline.tree_policy at each of the sweep's batch sizes, AR included, each with the
   spread of spec/AR and tau that runs of the sweep's prompts, drawn from the held-out ones,
   would measure (tree_policy.spread).
Everything lands in OUT/auto_trees.json; a resume plans from it, so it runs the same cells.

`scylla generate --top-k auto` prices the same way with no sweep and no profile
(`generate_tree`): held-out prompts of all six datasets pooled, in the proportions of each one's
categories (where a dataset has one category, those `nox -s bench` replays), and the verify
curve timed now.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.auto_trees_record import RECORD, RecordedChoice, recorded_choices, unit_name
from harness.runner import CellWorker, WorkerSettings
from harness.spec import SweepSpec
from roofline import tree_costs
from roofline.knee import PREFIX_TOKENS, measure_knee
from roofline.latency_curve import LatencyCurve, verify_curve
from roofline.policy import load_profile
from roofline.timing import Timer
from roofline.tree_policy import StepCosts, TreeChoice, ranked, spread
from scylla_impl import calibration
from scylla_impl.calibration import AcceptanceTable, replay_groups
from scylla_impl.methods import TRAINING_FREE
from workloads.cache import scylla_home
from workloads.errors import ScyllaError
from workloads.files import atomic_write_bytes
from workloads.long_prompts import middle_cut
from workloads.progress import ProgressBar

CALIBRATION = "calibration.json"
# Over all the sweep's datasets: 8 each of six. With 4 each, what was left of the prediction
# error was which prompts were held out (the chain's tau on MT-bench priced 1.94, measured
# 1.40; EAGLE-2's on GSM8K 2.04 against 1.71), at batch 1 and 4 alike.
HELD_OUT_PROMPTS = 48
# Tables replayed before they kept each prompt's steps (calibration.ReplayedRow) are not read.
TABLE_FORMAT = "per-row"
MIN_REPLAY_PROMPT = 16  # fewer prompt tokens than this is no longer the dataset's request
REPLAY_NEW_TOKENS = 64
KEEP_RANKED = 12  # runners-up kept per batch size in the record, for the report
# A dataset whose context (cached tokens) is more than this many times the profile's prefix
# gets its verify curve timed at its own length. Measured (Scylla-1, bf16, 2-core Xeon): at
# 2000 cached tokens the best tree shrank from 11 to 5 tokens and the 200-token choice fell
# from 1.38x to 0.99x of AR; between 100 and 200 tokens re-timing moved the choice only as
# much as timing noise does.
RETIME_PAST = 2.0


class AutoTrees:
    """(batch_size, draft spec, dataset, lookup chain) -> the tree `top_k auto` runs, from a record
    (see the module docstring)."""

    def __init__(self, record: dict[str, Any]):
        self.record = record
        self._choices = {(unit_name(r.draft, r.lookup_tokens), r.batch_size, r.dataset): r.choice
                         for r in recorded_choices(record)}

    def __call__(self, batch_size: int, draft: str, dataset: str, lookup_tokens: int = 0) -> TreeChoice:
        unit = unit_name(draft, lookup_tokens)
        for key in ((unit, batch_size, dataset), (unit, batch_size, None)):
            if key in self._choices:
                return self._choices[key]
        raise ScyllaError(f"top_k auto: no tree was priced for draft {unit!r} on {dataset} at batch size "
                          f"{batch_size}; {RECORD} in the results folder was made for another sweep")

    def write(self, out: Path) -> None:
        atomic_write_bytes(json.dumps(self.record, indent=1).encode(), out / RECORD)


def _key(spec: SweepSpec) -> dict[str, Any]:
    # max_new_tokens sets each dataset's context (_context), so the costs trees were priced at.
    return {"profile": str(spec.profile), "batch_sizes": sorted(spec.batch_sizes),
            "drafts": sorted(unit_name(d, m) for d, m in _auto_units(spec)),
            "target": spec.target, "dtype": spec.dtype, "device": spec.device, "datasets": list(spec.datasets),
            "prompts": spec.prompts, "max_new_tokens": spec.max_new_tokens}


def _made_for(recorded: dict[str, Any], spec: SweepSpec) -> bool:
    """Whether a record's key is this sweep's. Records from before max_new_tokens was part of it
    match on the rest, so sweeps started then still resume."""
    key = _key(spec)
    if "max_new_tokens" not in recorded:
        key.pop("max_new_tokens")
    return recorded == key


def _auto_units(spec: SweepSpec) -> list[tuple[str, int]]:
    """(draft, lookup chain) pairs the sweep's methods run, each once, by draft."""
    return sorted({(d, spec.lookup_tokens.get(m, 0)) for m in spec.all_methods if m != "ar"
                   for d in spec.draft.get(m, ())})


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
        return _recorded(Path(out) / RECORD, spec)
    worker = CellWorker(WorkerSettings.from_spec(spec))
    try:
        target = worker.target()
        knee_dtype = profile.document.knee_dtype
        dtype = str(target.dtype).removeprefix("torch.")
        if knee_dtype and knee_dtype != dtype:
            raise ScyllaError(f"the profile {spec.profile} timed the target in {knee_dtype}, this sweep runs it in "
                              f"{dtype}: profile again with --dtype {dtype}, or sweep with --dtype {knee_dtype}")
        prompts = _held_out_or_refuse(spec, target)
        profiled = int(profile.doc["knee"].get("prefix_tokens") or PREFIX_TOKENS)
        contexts = {name: {b: _context(target, ids, spec.max_new_tokens, profiled, b) for b in sorted(spec.batch_sizes)}
                    for name, ids in prompts.items()}
        curves = _verify_curves(target, spec, contexts, profiled, curve, echo)
        drafts = {}
        units = _auto_units(spec)
        for name in sorted({d for d, _ in units}):
            draft = worker.draft(name)
            echo(f"auto trees: timing draft {name} levels and step overheads at batch sizes "
                 f"{', '.join(map(str, sorted(spec.batch_sizes)))}")
            costs = {cached: tree_costs.measure(target, draft, spec.batch_sizes, prefix_tokens=cached) for cached in curves}
            for chain in sorted(m for d, m in units if d == name):
                unit = unit_name(name, chain)
                tables = _acceptance(target, draft, name, dtype, prompts, echo, chain)
                drafts[unit] = {"lookup_tokens": chain, "costs": {str(c): costs[c].to_json() for c in costs},
                                "datasets": {ds: _price(spec, tables[ds], curves, costs, contexts[ds]) for ds in prompts}}
                best = "; ".join(f"{r.dataset} b={r.batch_size}: {_said(r)}"
                                 for r in recorded_choices({"drafts": {unit: drafts[unit]}}))
                echo(f"auto trees for {unit}: {best}")
    finally:
        worker.close()
    return AutoTrees({"key": _key(spec), "profile_id": profile.profile_id, "verify_curve": curve.to_json(),
                      "contexts": {"cached_tokens": contexts, "profile_prefix_tokens": profiled,
                                   "timed_verify_curves": {str(c): v.to_json() for c, v in curves.items()
                                                           if c != profiled}},
                      "drafts": drafts, "definition": "step(l) = V(l,N+M) + P(l,max(D,M)+1) + (D-1) L(l,k) + o_spec(l,D) with l rows still "
                      "decoding (AR: V(l,1) + o_ar(l)); tokens/s = b E[tokens a row decodes] / E[sum of step(l) "
                      "until the batch's slowest row is done], rows drawn from the replayed prompts' step counts "
                      "at max_new_tokens; occupancy = tokens/s / (b (1+a) / step(b)); M the lookup chain's tokens "
                      "(0 with none); V, L and o at the dataset's context; see roofline/tree_policy.py"})


def _recorded(file: Path, spec: SweepSpec) -> AutoTrees:
    """The auto trees OUT/auto_trees.json holds, refused where they were made for another sweep."""
    try:
        record = json.loads(file.read_text())
        planned = AutoTrees(record) if _made_for(record.get("key") or {}, spec) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:  # a damaged or foreign file
        raise ScyllaError(f"{file}: unreadable ({type(err).__name__}: {err}); delete it to price the trees "
                          "again") from None
    if planned is None:
        raise ScyllaError(f"{file} was made for another sweep (profile, batch sizes, drafts, datasets, "
                          "prompts or max new tokens differ); write to another --out")
    return planned


def _verify_curves(target, spec: SweepSpec, contexts: dict[str, dict[int, int]], profiled: int, curve,
                   echo: Callable[[str], None]) -> dict:
    """Verify latency curves by cached tokens, for the context lengths some dataset is priced at:
    the profile's own, and one timed here for each length past RETIME_PAST x it (a sweep of
    CNN/DM alone never reads the profile's)."""
    lengths = {c for per in contexts.values() for c in per.values()}
    curves = {profiled: curve} if profiled in lengths else {}
    for cached in sorted(lengths - {profiled}):
        where = ", ".join(f"{n} at batch {b}" for n, per in contexts.items() for b, c in per.items() if c == cached)
        echo(f"auto trees: {where} runs over about {cached} cached tokens, past {RETIME_PAST:g}x the profile's "
             f"{profiled}: timing the verify curve there")
        curves[cached] = measured_verify_curve(target, spec.batch_sizes, cached, _most_tokens(target, cached))
    return curves


def _said(r: RecordedChoice) -> str:
    """A priced choice as the sweep says it: the tree, and for a tree its predicted spec/AR with
    the 10-90% range of runs of the sweep's prompts."""
    if r.spread is None:
        return r.choice.label()
    low, *_, high = r.spread.speedup
    return f"{r.choice.label()} ({r.speedup:.2f}x, {low:.2f}-{high:.2f})"


def _context(target, prompts: list[list[int]], max_new_tokens: int, profiled: int, batch_size: int) -> int:
    """Cached tokens a dataset's trees are priced at for a batch: the profile's prefix where the
    batch's (longest prompt, half its new tokens) is within RETIME_PAST of it, else that length.
    Every row of a batch attends as far as its longest row (the shorter ones are masked, and the
    masked keys are still read): at batch 4 CNN/DM's verify ran 1.37-1.46x its price at the mean
    article's length, and its longest article was 1.77x the mean."""
    cached = _fit_prefix(target, round(expected_longest([len(p) for p in prompts], batch_size)) + max_new_tokens // 2)
    return profiled if cached <= RETIME_PAST * profiled else cached


def expected_longest(lengths: list[int], batch_size: int) -> float:
    """E[the longest of `batch_size` rows drawn at random from `lengths`] (their mean for one row)."""
    ordered, m = sorted(lengths), len(lengths)
    return sum(x * ((i / m) ** batch_size - ((i - 1) / m) ** batch_size) for i, x in enumerate(ordered, 1))


def _fit_prefix(target, cached: int) -> int:
    """`cached` tokens, or fewer where the target's context must also hold the largest priced tree."""
    context = target.info.context
    return cached if context is None else max(1, min(cached, context - calibration.MAX_TREE_TOKENS - 8))


def _most_tokens(target, cached: int) -> int | None:
    return None if target.info.context is None else target.info.context - cached - 8


def _price(spec: SweepSpec, table: AcceptanceTable, curves: dict[int, LatencyCurve],
           costs: dict[int, tree_costs.DraftCosts], contexts: dict[int, int]) -> dict[str, Any]:
    """One dataset's choices per batch size, each priced at that batch's context (cached tokens),
    with the spread a run of the sweep's prompts would measure for the choice."""
    per_batch = {}
    row_tokens, trees = table.decodes(spec.max_new_tokens)
    moves = {(k, d, n): m for k, d, n, m in trees}
    for b in sorted(spec.batch_sizes):
        step = _step_costs(curves[contexts[b]], costs[contexts[b]])
        options = ranked(b, trees, step, row_tokens, table.lookup_tokens, keep=KEEP_RANKED)
        best = options[0]
        per_batch[str(b)] = {"choice": best.to_json(), "ranked": [o.to_json() for o in options[:KEEP_RANKED]],
                             "ar": next(o for o in options if not o.speculative).to_json()}
        if best.speculative:
            tree = moves[best.top_k, best.depth, best.total_tokens]
            per_batch[str(b)]["spread"] = spread(best, tree, row_tokens, step, spec.prompts).to_json()
    return {"acceptance": table.to_json(), "batch_sizes": per_batch}


def _step_costs(curve: LatencyCurve, costs: tree_costs.DraftCosts) -> StepCosts:
    return StepCosts(curve.seconds, costs.level.seconds, costs.path.seconds, costs.ar_overhead, costs.spec_overhead)


def held_out_prompts(datasets, skip: int, tokenizer, data_dir=None, system_prompt: str | None = None,
                     room: int | None = None) -> dict[str, list[list[int]]]:
    """Per dataset, token ids of the prompts `held_out_indices` picks past its first `skip`; a
    prompt longer than `room` tokens (a target's context less what a replay adds) is cut in its
    middle, as a `--long-prompts truncate` sweep cuts it."""
    from workloads.chat import prompt_token_ids
    from workloads.datasets import load_dataset

    per = -(-HELD_OUT_PROMPTS // len(datasets))
    held = {}
    for name in datasets:
        prompts = load_dataset(name, data_dir=data_dir)
        ids = [prompt_token_ids(tokenizer, prompts[i], system_prompt=system_prompt)
               for i in held_out_indices([p.category for p in prompts], skip, per)]
        if ids:
            held[name] = [p if room is None else middle_cut(p, room) for p in ids]
    return held


def held_out_indices(categories: list[str], skip: int, count: int) -> list[int]:
    """Which `count` prompts past the first `skip` price a sweep that measures those first ones:
    drawn from the measured prompts' categories in their proportions (the whole dataset's where
    none are measured, as for `generate`), the last prompts of each; where a category runs short,
    the last of the measured categories' others, then of the rest. A dataset of one category
    gives its last prompts. Measured: MT-bench is ordered by category, ten each; priced on its
    last eight (all humanities) or on one of each category, the chain's tau on its first four
    (writing) came out 1.73 or 2.27 against 1.43 and 1.46 measured."""
    spare = range(skip, len(categories))
    total = min(count, len(spare))
    measured = Counter(categories[:skip] or categories)
    picked: list[int] = []
    for category, slots in _apportion(measured, total).items():
        own = [i for i in spare if categories[i] == category]
        picked += own[len(own) - min(slots, len(own)):]
    # Short: first the measured categories' other prompts, then any.
    for pool in ([i for i in spare if categories[i] in measured], list(spare)):
        taken = set(picked)
        pool = [i for i in pool if i not in taken]
        short = total - len(picked)
        picked += pool[len(pool) - short:] if short > 0 else []
    return sorted(picked)


def _apportion(counts: Counter, seats: int) -> dict[str, int]:
    """`seats` split over the categories in proportion to `counts`, by largest remainder
    (ties to the category seen first)."""
    whole = sum(counts.values())
    quotas = {c: seats * n / whole for c, n in counts.items()}
    given = {c: int(q) for c, q in quotas.items()}
    for c in sorted(quotas, key=lambda c: given[c] - quotas[c])[:seats - sum(given.values())]:
        given[c] += 1
    return given


def _replay_room(target) -> int | None:
    """Prompt tokens a replay can take: the context less its new tokens and the deepest tree."""
    context = target.info.context
    if context is None:
        return None
    room = context - REPLAY_NEW_TOKENS - calibration.MAX_DEPTH - 8
    if room < MIN_REPLAY_PROMPT:
        raise ScyllaError(f"top_k auto: {target.info.name}'s context of {context} tokens leaves {max(room, 0)} for a "
                          f"prompt after the replay's {REPLAY_NEW_TOKENS} new ones; give a number --top-k")
    return room


def _held_out_or_refuse(spec: SweepSpec, target) -> dict[str, list[list[int]]]:
    held = held_out_prompts(spec.datasets, spec.prompts, target.tokenizer, spec.data_dir, spec.system_prompt,
                            _replay_room(target))
    if missing := [d for d in spec.datasets if d not in held]:
        raise ScyllaError(f"top_k auto needs held-out prompts to measure the draft's acceptance, but the sweep "
                          f"measures every prompt of {', '.join(missing)}: lower --prompts")
    return held


def generate_tree(target, draft, name: str, batch_size: int, max_new_tokens: int, cached_tokens: int = PREFIX_TOKENS,
                  echo: Callable[[str], None] = print, lookup_tokens: int = 0) -> tuple[TreeChoice, TreeChoice]:
    """`scylla generate --top-k auto`: (the speculative tree with the most predicted tokens/s for
    `draft`, with a `lookup_tokens` chain grafted under it, at `batch_size` rows of
    `max_new_tokens` on this device, AR's prediction beside it). The best tree is returned even where AR is predicted faster: the
    caller asked for speculative decoding, and is told.

    The acceptance is kept where `calibration_file(name)` says (replayed on first use, as a
    sweep does, with no system prompt, as the bench's); the verify curve, draft levels and step
    overheads are timed now, in seconds, over a cache of `cached_tokens` (the decode's own
    length: attention over a long article costs more than over a question)."""
    from workloads.datasets import DATASET_NAMES

    prompts = held_out_prompts(DATASET_NAMES, 0, target.tokenizer, room=_replay_room(target))
    dtype = str(target.dtype).removeprefix("torch.")
    table = AcceptanceTable.pooled(list(_acceptance(target, draft, name, dtype, prompts, echo, lookup_tokens).values()))
    echo("auto tree: timing the target's verify forward, the draft's levels and the step overheads here")
    prefix = _fit_prefix(target, cached_tokens)
    curve = measured_verify_curve(target, [batch_size], prefix, _most_tokens(target, prefix))
    costs = tree_costs.measure(target, draft, [batch_size], prefix_tokens=prefix)
    row_tokens, trees = table.decodes(max_new_tokens)
    options = ranked(batch_size, trees, _step_costs(curve, costs), row_tokens, table.lookup_tokens, keep=KEEP_RANKED)
    ar = next(o for o in options if not o.speculative)
    return next((o for o in options if o.speculative), ar), ar


VERIFY_TOKENS = (1, 2, 4, 8, 16, 32, 64, calibration.MAX_TREE_TOKENS)
VERIFY_MAX_IN_FLIGHT = 512  # past this the curve goes on along its last (compute-bound) slope


def measured_verify_curve(target, batch_sizes, prefix_tokens: int, most_tokens: int | None) -> LatencyCurve:
    """V(b, n) at each of `batch_sizes`, timed now over `prefix_tokens` cached ones (the
    profile's knee measurement, three rounds)."""
    grid = [(b, n) for b in sorted(set(batch_sizes)) for n in VERIFY_TOKENS
            if (n == 1 or b * n <= VERIFY_MAX_IN_FLIGHT) and (most_tokens is None or n <= most_tokens)]
    points, _ = measure_knee(target, grid, prefix_tokens=prefix_tokens, timer=Timer(target.device, clock="wall"),
                             warmup=1, reps=3)
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


def _acceptance(target, draft, name: str, dtype: str, prompts: dict[str, list[list[int]]],
                echo, lookup_tokens: int = 0) -> dict[str, AcceptanceTable]:
    """The draft's acceptance table per group of prompts (a dataset's), with a `lookup_tokens`
    chain grafted under its trees: from its checkpoint folder's calibration.json where kept, the
    rest replayed now, together."""
    top_ks, depth = calibration.TOP_KS, calibration.MAX_DEPTH
    # A draft decoding in another precision than the target's (drafts/base.py decode_dtype) says so.
    precision = dtype if draft.info.dtype in (None, dtype) else f"{dtype}-draft-{draft.info.dtype}"

    def key(ids: list[list[int]]) -> str:
        digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
        # Tables without a chain keep the key they had before chains were priced.
        chain = (f"lookup-{lookup_tokens}",) if lookup_tokens else ()
        return "/".join(map(str, (draft.info.weights_hash, target.info.fingerprint, precision, digest,
                                  REPLAY_NEW_TOKENS, ",".join(map(str, top_ks)), depth, TABLE_FORMAT, *chain)))

    cache = calibration_file(name)
    stored = {}
    if cache is not None and cache.is_file():
        try:
            stored = json.loads(cache.read_text())
        except (OSError, json.JSONDecodeError):
            stored = {}  # a damaged cache is measured again, and rewritten
    if not isinstance(stored, dict):
        stored = {}
    tables = {}
    for group, ids in prompts.items():
        with contextlib.suppress(KeyError, ScyllaError):  # not kept yet, or damaged: replayed again
            tables[group] = AcceptanceTable.from_json(stored[key(ids)])
    todo = {group: ids for group, ids in prompts.items() if group not in tables}
    if not todo:
        return tables
    count = sum(map(len, todo.values()))
    chain = f" with a {lookup_tokens}-token lookup chain" if lookup_tokens else ""
    echo(f"auto trees: replaying draft {name}{chain} on {count} held-out prompts of {', '.join(todo)} "
         f"({REPLAY_NEW_TOKENS} tokens each)")
    # A batch of long prompts (CNN/DM's) replays for minutes: a bar on a terminal, a line at least
    # every 30 s of batches off one.
    with ProgressBar("auto trees", "replay", count, unit="prompts", rate_unit="prompt", every_s=30) as bar:
        tables.update(replay_groups(target, draft, todo, new_tokens=REPLAY_NEW_TOKENS, top_ks=top_ks, max_depth=depth,
                                    lookup_tokens=lookup_tokens, on_batch=lambda done, _: bar.update(done - bar.done)))
    if cache is not None:
        # Tables of an older format are never read again (TABLE_FORMAT): not kept.
        stored = {k: v for k, v in stored.items() if TABLE_FORMAT in k.split("/")}
        stored.update({key(ids): tables[group].to_json() for group, ids in todo.items()})
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(json.dumps(stored).encode(), cache)
        except (OSError, ScyllaError) as err:  # a read-only checkpoint still runs; it just replays next time
            echo(f"  (could not keep the tables in {cache}: {err})")
    return {group: tables[group] for group in prompts}
