"""`scylla scaling`: the paper's three scaling laws at this machine's scale, in resumable pieces.

Scylla (arXiv 2505.07858) claims that
  - Theorem 1.1: the acceptance length tau grows log-linearly with the draft's pretraining
    tokens (the `tokens` series: one layer count, several pretraining budgets, the same SFT stage);
  - Theorem 1.2: ... and with its decoder layers (the `layers` series: 1..5 layers at one budget);
  - Theorem 1.3: the optimal top_k k* falls with the decoding batch size b (the `batch` series:
    fixed trees of several top_k and top_k auto at several batch sizes, with the draft of the
    tokens series' largest budget; k*(b) is the top_k of the fastest fixed tree at each b).
The `arch` series is the paper's architecture ablation: the same Scylla draft (--arch-layers
layers, --layers-budget tokens, the same data) with its input projection and with plain
concatenation (scylla_impl/drafts/scylla.py), compared in tau and net speed (OUT/ablation.parquet).

A run is pieces, each one finished or resumed where it stopped when the command runs again:
every draft is a training run in OUT/drafts/<name> (kept once finished, resumed from its last
checkpoint if interrupted); one sweep in OUT/sweep measures every draft's tau at one fixed
tree on the chosen datasets; the batch series adds a quick device profile in OUT/profile (it
prices top_k auto) and its own sweep in OUT/sweep-batch (finished cells are kept in both). The
drafts train largest pretraining budget first: the target's features are cached once for the
largest stream, and every smaller budget reads a prefix of it (scylla_impl/training/features.py),
so the whole series costs little more than its largest member. OUT/scaling.json holds the plan;
a rerun with other values is refused rather than mixed into the same series.

Fits (harness/scaling_fit.py) are tau = alpha log10(x) + beta and log10 k* = alpha log10(b) +
beta, per dataset and pooled, with R^2 and a 95% interval on alpha, in OUT/fits.parquet;
`scylla report OUT/sweep` and `scylla report OUT/sweep-batch` draw them beside the paper's claims.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import yaml

from harness.pooled import fastest_fixed_trees, input_ablation, tau_series
from harness.scaling_fit import LogFit, claim_verdict, fit_log10, fit_loglog
from scylla_impl import dtypes
from scylla_impl.methods import BY_NAME, CONCAT, PROJECTION
from workloads.datasets import DATASET_NAMES
from workloads.errors import ScyllaError
from workloads.files import atomic_write_bytes

PLAN_FILE = "scaling.json"
FITS_FILE = "fits.parquet"
SERIES = ("tokens", "layers", "batch", "arch")
TAU_LAWS = ("tokens", "layers")  # fitted on tau; "batch" on the fastest tree's top_k
TAU_SERIES = (*TAU_LAWS, "arch")  # measured in OUT/sweep; "batch" in OUT/sweep-batch
ABLATION_FILE = "ablation.parquet"
FIT_COLUMNS = ["series", "variable", "response", "dataset", "n", "alpha", "alpha_ci95", "beta", "r2", "x", "y"]
PROFILE_DIR = "profile"
METHOD = "scylla"


def _tokens(text: str) -> tuple[int, ...]:
    from scylla_impl.training.config import parse_tokens

    return tuple(parse_tokens(t) for t in text.split(",") if t.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ScyllaError(f"not a comma-separated list of whole numbers: '{text}'") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ScyllaError(f"not a whole number: '{text}'") from None


def _words(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _train_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ScyllaError(f"--train: '{pair}' is not KEY=VALUE (example: --train seq_len=512)")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


class Point(NamedTuple):
    """One draft of a plan."""

    layers: int
    tokens: int  # pretraining tokens
    draft_input: str = PROJECTION  # Scylla's own input path, or the ablation's (DraftConfig.draft_input)


def _opt(default: Any, help: str, parse=None, **kw) -> Any:
    """A plan field and its `scylla scaling` option (harness/commands/scaling.py makes the flag)."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"help": help, "parse": parse, **kw})


@dataclass(frozen=True)
class ScalingPlan:
    """What one scaling run trains and measures. Every field is a `scylla scaling` option."""

    target: str = _opt("default", "target model: 'default' (the embedded model) or a Hugging Face folder")
    series: tuple[str, ...] = _opt(SERIES, "what to run: tokens (Thm 1.1), layers (Thm 1.2), batch (Thm 1.3), arch "
                                           "(input projection vs concatenation)", _words)
    budgets: tuple[int, ...] = _opt((32_768, 131_072, 327_680, 1_048_576),
                                    "tokens series: pretraining budgets (1.5 decades by default)", _tokens)
    budget_layers: int = _opt(1, "tokens series: decoder layers of every draft", _int)
    layers: tuple[int, ...] = _opt((1, 2, 3, 4, 5), "layers series: decoder layer counts", _ints)
    layers_budget: int = _opt(131_072, "layers and arch series: pretraining tokens of every draft",
                              lambda t: _tokens(t)[0])
    arch_layers: int = _opt(1, "arch series: decoder layers of both drafts", _int)
    sft_tokens: int | None = _opt(None, "stage-2 (chat) budget of every draft (default: the default recipe's)",
                                  lambda t: _tokens(t)[0])
    epochs: int = _opt(1, "passes over each stage's data (1: a budget counts distinct tokens, which buy more than "
                          "passes)", _int)
    datasets: tuple[str, ...] = _opt(DATASET_NAMES, "datasets tau is measured on", _words)
    data_dir: str | None = _opt(None, "folder of EAGLE-format eval files (default: the packaged ones); also what "
                                      "training is decontaminated against", str)
    prompts: int = _opt(8, "prompts per dataset (first turns)", _int)
    max_new_tokens: int = _opt(48, "new tokens per prompt", _int)
    top_k: int = _opt(4, "the one fixed tree every draft is measured at: its top_k", _int)
    depth: int = _opt(5, "... and its depth", _int)
    batch_sizes: tuple[int, ...] = _opt((1, 2, 4, 8), "batch series: decoding batch sizes", _ints)
    batch_top_k: tuple[int, ...] = _opt((1, 2, 4, 8), "batch series: fixed trees' top_k values (top_k auto runs "
                                                      "beside them)", _ints)
    batch_depth: int = _opt(4, "batch series: fixed trees' depth", _int)
    batch_datasets: tuple[str, ...] = _opt(("mt_bench", "humaneval", "gsm8k"), "batch series: datasets", _words)
    dtype: str = _opt(dtypes.AUTO, "precision of the target's features and of decoding (auto: each the faster for "
                                   "its work on this device)", str, choices=dtypes.CHOICES)
    seed: int = _opt(0, "seed of the data order, the drafts' initialisation and the prompts", _int)
    train: dict[str, Any] = _opt(dict, "a further training option for every draft, KEY=VALUE (a TrainConfig "
                                       "field such as seq_len=512); repeatable", _train_options, multiple=True)

    def __post_init__(self) -> None:
        for name in ("series", "budgets", "layers", "datasets", "batch_sizes", "batch_top_k", "batch_datasets"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "train", dict(self.train))
        unknown = set(self.series) - set(SERIES)
        if not self.series or unknown:
            raise ScyllaError(f"series must be some of {', '.join(SERIES)}, got {', '.join(self.series) or 'none'}")
        if "tokens" in self.series and len(set(self.budgets)) < 2:
            raise ScyllaError("the tokens series needs at least two different --budgets")
        if "layers" in self.series and len(set(self.layers)) < 2:
            raise ScyllaError("the layers series needs at least two different --layers")
        if any(b < 1 for b in self.budgets) or self.layers_budget < 1:
            raise ScyllaError("pretraining budgets must be positive token counts")
        deepest = BY_NAME[METHOD].draft_class.max_layers
        if not all(1 <= n <= deepest for n in (*self.layers, self.budget_layers, self.arch_layers)):
            raise ScyllaError(f"layer counts must be 1..{deepest} (Scylla's deepest draft)")
        if "batch" in self.series:
            if not self.budgets:
                raise ScyllaError("the batch series needs --budgets (its draft is the largest budget's)")
            if len(set(self.batch_sizes)) < 2 or min(self.batch_sizes) < 1:
                raise ScyllaError("the batch series needs at least two different --batch-sizes, each >= 1")
            if not self.batch_top_k or min(self.batch_top_k) < 1 or self.batch_depth < 1:
                raise ScyllaError("--batch-top-k values and --batch-depth must be >= 1")
        for datasets in (self.datasets, self.batch_datasets):
            unknown = [d for d in datasets if d not in DATASET_NAMES]
            if unknown or not datasets:
                raise ScyllaError(f"unknown dataset(s) {', '.join(unknown) or 'none given'}; "
                                  f"known: {', '.join(DATASET_NAMES)}")
        if self.epochs < 1 or self.prompts < 1 or self.max_new_tokens < 1 or self.top_k < 1 or self.depth < 1:
            raise ScyllaError("epochs, prompts, max-new-tokens, top-k and depth must be >= 1")
        for key in ("method", "layers", "pretrain_tokens", "sft_tokens", "name", "target", "dtype", "seed", "data_dir",
                    "epochs"):
            if key in self.train:
                raise ScyllaError(f"train option '{key}' is set by the scaling plan itself")
        for point in self.points():  # every draft's training config, checked before anything runs
            self.train_config(point, dtype="float32")

    def train_config(self, point: Point, dtype: str):
        """The recipe of one draft: the default recipe with this plan's budgets and options."""
        from scylla_impl.training.config import TrainConfig, recipe

        unknown = set(self.train) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise ScyllaError(f"unknown training option(s) {', '.join(sorted(unknown))} in --train")
        overrides = dict(self.train, pretrain_tokens=point.tokens, name=draft_name(point), seed=self.seed,
                         data_dir=self.data_dir, epochs=self.epochs, dtype=dtype)
        if point.draft_input != PROJECTION:  # Scylla's own is left unset, so the layers series' draft is shared
            overrides["draft_input"] = point.draft_input
        if self.sft_tokens is not None:
            overrides["sft_tokens"] = self.sft_tokens
        try:
            return recipe(METHOD, layers=point.layers, target=self.target, **overrides)
        except TypeError as err:  # a --train value of the wrong kind (seq_len=long) meets a comparison
            raise ScyllaError(f"--train: a value of the wrong type ({err})") from None

    def points(self, series: tuple[str, ...] = SERIES) -> list[Point]:
        """Every draft of `series` that the plan runs, largest budget first, each once."""
        run = set(self.series) & set(series)
        pts = []
        if "tokens" in run:
            pts += [Point(self.budget_layers, b) for b in self.budgets]
        if "layers" in run:
            pts += [Point(n, self.layers_budget) for n in self.layers]
        if "batch" in run:
            pts.append(self.batch_draft())
        if "arch" in run:
            pts += [Point(self.arch_layers, self.layers_budget, kind) for kind in (PROJECTION, CONCAT)]
        return sorted(set(pts), key=lambda p: (-p.tokens, p.layers, p.draft_input != PROJECTION))

    def batch_draft(self) -> Point:
        """The batch series' draft: the tokens series' best (most pretraining tokens)."""
        return Point(self.budget_layers, max(self.budgets))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def draft_name(point: Point) -> str:
    suffix = "" if point.draft_input == PROJECTION else f"-{point.draft_input}"
    return f"{METHOD}-L{point.layers}-P{point.tokens}{suffix}"


def check_plan(out: Path, plan: ScalingPlan) -> None:
    """Record the plan in OUT, or check that OUT holds the same one (a resume)."""
    path = out / PLAN_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ScyllaError(f"cannot read {path}: {err}") from None
        now = plan.to_dict()
        # A field the saved plan lacks was added since it was written: it ran with that field's default.
        defaults = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
                    for f in dataclasses.fields(ScalingPlan)}
        saved = {**json.loads(json.dumps(defaults)), **saved}
        diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
        if diff:
            key, (was, new) = next(iter(diff.items()))
            raise ScyllaError(f"'{out}' holds a scaling run with {key}={was!r}, not {new!r}: run it again with the "
                              "same options to resume it, or choose another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(json.dumps(plan.to_dict(), indent=2).encode(), path)


def sweep_spec(plan: ScalingPlan, drafts: list[Path], out: Path, threads: int | None):
    """The tau series' sweep: every draft at one fixed tree, batch 1."""
    from harness.spec import spec_from_dict

    return spec_from_dict({
        "target": plan.target, "methods": ["ar", METHOD], "draft": {METHOD: [str(d) for d in drafts]},
        "datasets": list(plan.datasets), "batch_sizes": [1], "top_k": [plan.top_k], "depths": [plan.depth],
        "temperatures": [0.0], "prompts": plan.prompts, "max_new_tokens": plan.max_new_tokens, "turns": "first",
        "data_dir": plan.data_dir, "dtype": plan.dtype, "threads": threads, "seed": plan.seed, "out": str(out / "sweep"),
    })


def batch_sweep_spec(plan: ScalingPlan, draft: Path, out: Path, threads: int | None):
    """The batch series' sweep: one draft, fixed trees of every --batch-top-k and top_k auto
    (priced with OUT/profile) at every batch size. Each batch size gets at least one full batch."""
    from harness.spec import spec_from_dict

    return spec_from_dict({
        "target": plan.target, "methods": ["ar", METHOD], "draft": {METHOD: [str(draft)]},
        "datasets": list(plan.batch_datasets), "batch_sizes": list(plan.batch_sizes),
        "top_k": [*plan.batch_top_k, "auto"], "depths": [plan.batch_depth], "temperatures": [0.0],
        "prompts": max(plan.prompts, *plan.batch_sizes), "max_new_tokens": plan.max_new_tokens, "turns": "first",
        "data_dir": plan.data_dir, "dtype": plan.dtype, "threads": threads, "seed": plan.seed,
        "profile": str(out / PROFILE_DIR), "out": str(out / "sweep-batch"),
    })


def ensure_profile(plan: ScalingPlan, out: Path, echo) -> Path:
    """A quick device profile in OUT/profile (its verify curve prices top_k auto), kept once made."""
    from roofline.profile import ProfileOptions, run_profile

    folder = out / PROFILE_DIR
    if not (folder / "profile.json").is_file():
        echo("[scaling] profiling the device for top_k auto (scylla profile --quick)")
        run_profile(ProfileOptions(out=folder, device="cpu", target=plan.target, dtype=plan.dtype, quick=True))
    return folder


@dataclass(frozen=True)
class Outcome:
    fits: pd.DataFrame  # the laws' fits (FITS_FILE); empty when the plan runs only the ablation
    ablation: pd.DataFrame | None  # the arch series' comparison (ABLATION_FILE); None without it


def run(plan: ScalingPlan, out: Path, *, threads: int | None = None, progress: str = "auto", echo=print) -> Outcome:
    """Train what is missing, measure what is missing, fit and compare; the results also go to
    OUT/fits.parquet and OUT/ablation.parquet."""
    from harness.progress import BarProgress
    from harness.runner import run_sweep
    from scylla_impl.target import Target
    from scylla_impl.trained import train_or_resume

    check_plan(out, plan)
    points = plan.points()
    # Features in training's precision (its rule for `auto` is the bulk one); the sweeps decode in
    # decoding's, which on some CPUs is the other one (scylla_impl/precision.py).
    target = Target.load(plan.target, dtype=plan.train_config(points[0], dtype=plan.dtype).dtype)
    drafts = {}
    for i, point in enumerate(points, 1):
        echo(f"[scaling] draft {i}/{len(points)}: {draft_name(point)} ({point.layers} layer{'s' * (point.layers > 1)}, "
             f"{point.tokens:,} pretraining tokens{', input ' + point.draft_input if 'arch' in plan.series else ''})")
        config = plan.train_config(point, dtype=plan.dtype)
        drafts[point] = train_or_resume(config, out / "drafts" / draft_name(point), target, progress=progress)
    del target  # each sweep loads its own

    def measure(spec) -> pd.DataFrame:
        folder = Path(spec.out)
        report = run_sweep(spec, folder, resume=(folder / "results.parquet").is_file(), retry_failed=True,
                           progress=BarProgress())
        return pd.read_parquet(report.results_path)

    fits, ablation = [], None
    tau_points = plan.points(TAU_SERIES)
    if tau_points:
        echo(f"[scaling] measuring tau of {len(tau_points)} drafts on {len(plan.datasets)} datasets "
             f"(top_k {plan.top_k}, depth {plan.depth}, {plan.prompts} prompts each)")
        results = measure(sweep_spec(plan, [drafts[p] for p in tau_points], out, threads))
        fits.append(fit_results(results, plan))
        if "arch" in plan.series:
            ablation = compare_inputs(results, plan)
            atomic_write_bytes(ablation.to_parquet(index=False), out / ABLATION_FILE)
    if "batch" in plan.series:
        ensure_profile(plan, out, echo)
        echo(f"[scaling] measuring the fastest tree at batch sizes {', '.join(map(str, plan.batch_sizes))} "
             f"(top_k {', '.join(map(str, plan.batch_top_k))} and auto, depth {plan.batch_depth}) on "
             f"{', '.join(plan.batch_datasets)}")
        fits.append(fit_topk(measure(batch_sweep_spec(plan, drafts[plan.batch_draft()], out, threads))))
    fits = pd.concat(fits, ignore_index=True) if fits else pd.DataFrame(columns=FIT_COLUMNS)
    if len(fits):
        atomic_write_bytes(fits.to_parquet(index=False), out / FITS_FILE)
    return Outcome(fits, ablation)


def _fit_row(series: str, variable: str, response: str, dataset: str, points: list[tuple[float, float]], fit) -> dict:
    return {
        "series": series, "variable": variable, "response": response, "dataset": dataset, "n": len(points),
        "alpha": fit.alpha if fit else None, "alpha_ci95": fit.alpha_ci95 if fit else None,
        "beta": fit.beta if fit else None, "r2": fit.r2 if fit else None,
        "x": [float(p[0]) for p in points], "y": [float(p[1]) for p in points],
    }


def fit_results(results: pd.DataFrame, plan: ScalingPlan) -> pd.DataFrame:
    """One row per (tau series, dataset or 'pooled'): the fit of tau on log10 of the series'
    variable over its drafts. Pooled tau is over the datasets every draft of the series has."""
    ok = results[(results["status"] == "ok") & (results["method"] == METHOD)]
    rows = []
    for series in (s for s in plan.series if s in TAU_LAWS):
        if series == "tokens":
            members = {draft_name(Point(plan.budget_layers, b)): b for b in plan.budgets}
        else:
            members = {draft_name(Point(n, plan.layers_budget)): n for n in plan.layers}
        names = ok["draft"].map(lambda d: Path(str(d)).name)
        cells = ok[names.isin(members)].assign(x=names[names.isin(members)].map(members))
        variable = "pretrain_tokens" if series == "tokens" else "draft_layers"
        for dataset, points in tau_series(cells, "x").items():
            fit = fit_log10(*zip(*points)) if points else None
            rows.append(_fit_row(series, variable, "tau", dataset, points, fit))
    return pd.DataFrame(rows, columns=FIT_COLUMNS)


def compare_inputs(results: pd.DataFrame, plan: ScalingPlan) -> pd.DataFrame:
    """The arch series: its two drafts' tau and spec/AR per dataset and pooled (harness/pooled.py)."""
    names = {draft_name(Point(plan.arch_layers, plan.layers_budget, kind)) for kind in (PROJECTION, CONCAT)}
    ok = results[(results["status"] == "ok") & (results["method"] == METHOD)]
    return input_ablation(ok[ok["draft"].map(lambda d: Path(str(d)).name).isin(names)])


def fit_topk(results: pd.DataFrame) -> pd.DataFrame:
    """The batch series: per dataset and pooled (tokens/s averaged over the datasets), k* at each
    batch size (the top_k of the fastest fixed tree) and the log-log fit of k* on b."""
    ok = results[(results["status"] == "ok") & (results["method"] == METHOD)]
    groups = [(d, ok[ok["dataset"] == d]) for d in sorted(ok["dataset"].unique())] + [("pooled", ok)]
    rows = []
    for dataset, g in groups:
        best = fastest_fixed_trees(g)
        points = list(zip(best["batch_size"].astype(float), best["top_k"].astype(float)))
        rows.append(_fit_row("batch", "batch_size", "top_k*", dataset, points,
                             fit_loglog(best["batch_size"], best["top_k"])))
    return pd.DataFrame(rows)


LAWS = {  # series -> (the fitted line, in words; what the paper claims about its slope)
    "tokens": ("tau = alpha log10(pretraining tokens) + beta", "Thm 1.1: alpha > 0"),
    "layers": ("tau = alpha log10(draft layers) + beta", "Thm 1.2: alpha > 0"),
    "batch": ("log10 top_k* = alpha log10(batch size) + beta", "Thm 1.3: alpha < 0"),
}


def describe(fits: pd.DataFrame) -> str:
    """The fits as text, each slope's sign checked against the paper's claim with its interval."""
    lines = []
    for series, g in fits.groupby("series", sort=False):
        law, claim = LAWS[series]
        lines.append(f"{law}   ({claim})")
        sign = -1 if series == "batch" else 1
        for r in g.itertuples():
            if r.alpha is None or pd.isna(r.alpha):
                lines.append(f"  {r.dataset:18s} no fit ({r.n} point{'s' * (r.n != 1)})")
                continue
            fit = LogFit(alpha=r.alpha, beta=r.beta, r2=r.r2, n=r.n,
                         alpha_ci95=math.nan if pd.isna(r.alpha_ci95) else r.alpha_ci95)
            pts = ", ".join(f"{x:,.0f}: {y:.2f}" if float(x).is_integer() else f"{x:g}: {y:.2f}" for x, y in zip(r.x, r.y))
            interval = "" if pd.isna(r.alpha_ci95) else f" +- {r.alpha_ci95:.3f}"
            lines.append(f"  {r.dataset:18s} alpha {r.alpha:+.3f}{interval}  R^2 {r.r2:.2f}  "
                         f"({claim_verdict(fit, sign)}; {pts})")
    return "\n".join(lines)


def describe_ablation(ablation: pd.DataFrame) -> str:
    """The arch series as text: tau and spec/AR of both input paths, per dataset and pooled."""
    lines = [f"input projection vs plain concatenation ({METHOD}, the same data): tau (spec/AR tokens/s)"]
    for r in ablation.itertuples():
        interval = "" if pd.isna(r.gain_ci95) else f" +- {r.gain_ci95:.3f} (95%, over the datasets)"
        lines.append(f"  {r.dataset:18s} projection {r.tau_projection:.2f} ({r.speedup_projection:.2f}x)   "
                     f"concat {r.tau_concat:.2f} ({r.speedup_concat:.2f}x)   concat - projection {r.tau_gain:+.3f}{interval}")
    return "\n".join(lines)


__all__ = ["ABLATION_FILE", "FITS_FILE", "LAWS", "PLAN_FILE", "SERIES", "Outcome", "Point", "ScalingPlan",
           "batch_sweep_spec", "check_plan", "compare_inputs", "describe", "describe_ablation", "draft_name",
           "ensure_profile", "fit_results", "fit_topk", "run", "sweep_spec"]
