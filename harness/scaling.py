"""`scylla scaling`: the paper's first two scaling laws at this machine's scale, in resumable pieces.

Scylla (arXiv 2505.07858) claims that the acceptance length tau grows log-linearly with
  - Theorem 1.1: the draft's pretraining tokens (the `tokens` series: one layer count, several
    pretraining budgets, the same SFT stage), and
  - Theorem 1.2: the draft's decoder layers (the `layers` series: 1..5 layers at one budget),
and Theorem 1.3 that the optimal top_k falls with the batch size (a tree sweep over batch
sizes with top_k auto beside fixed trees: the report's tree-policy section fits its slope).

A run is pieces, each one finished or resumed where it stopped when the command runs again:
every draft is a training run in OUT/drafts/<name> (kept once finished, resumed from its last
checkpoint if interrupted), then one sweep in OUT/sweep measures every draft at one fixed tree
on the chosen datasets (its finished cells are kept). The drafts train largest pretraining
budget first: the target's features are cached once for the largest stream, and every smaller
budget reads a prefix of it (scylla_impl/training/features.py), so the whole series costs
little more than its largest member. OUT/scaling.json holds the plan; a rerun with other
values is refused rather than mixed into the same series.

Fits (harness/scaling_fit.py) are tau = alpha log10(x) + beta per dataset and pooled, with R^2
and a 95% interval on alpha; `scylla report OUT/sweep` draws them beside the paper's claims.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from harness.pooled import pooled_tau
from harness.scaling_fit import fit_log10
from scylla_impl import dtypes
from workloads.datasets import DATASET_NAMES
from workloads.errors import ScyllaError
from workloads.files import atomic_write_bytes

PLAN_FILE = "scaling.json"
FITS_FILE = "fits.parquet"
SERIES = ("tokens", "layers")
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


def _opt(default: Any, help: str, parse=None, **kw) -> Any:
    """A plan field and its `scylla scaling` option (harness/commands/scaling.py makes the flag)."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"help": help, "parse": parse, **kw})


@dataclass(frozen=True)
class ScalingPlan:
    """What one scaling run trains and measures. Every field is a `scylla scaling` option."""

    target: str = _opt("default", "target model: 'default' (the embedded model) or a Hugging Face folder")
    series: tuple[str, ...] = _opt(SERIES, "laws to run: tokens (Thm 1.1), layers (Thm 1.2)", _words)
    budgets: tuple[int, ...] = _opt((32_768, 131_072, 327_680, 1_048_576),
                                    "tokens series: pretraining budgets (1.5 decades by default)", _tokens)
    budget_layers: int = _opt(1, "tokens series: decoder layers of every draft", _int)
    layers: tuple[int, ...] = _opt((1, 2, 3, 4, 5), "layers series: decoder layer counts", _ints)
    layers_budget: int = _opt(131_072, "layers series: pretraining tokens of every draft", lambda t: _tokens(t)[0])
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
    dtype: str = _opt(dtypes.AUTO, "precision of the target's features and of decoding", str, choices=dtypes.CHOICES)
    seed: int = _opt(0, "seed of the data order, the drafts' initialisation and the prompts", _int)
    train: dict[str, Any] = _opt(dict, "a further training option for every draft, KEY=VALUE (a TrainConfig "
                                       "field such as seq_len=512); repeatable", _train_options, multiple=True)

    def __post_init__(self) -> None:
        for name in ("series", "budgets", "layers", "datasets"):
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
        from scylla_impl.methods import BY_NAME

        deepest = BY_NAME[METHOD].draft_class.max_layers
        if not all(1 <= n <= deepest for n in (*self.layers, self.budget_layers)):
            raise ScyllaError(f"layer counts must be 1..{deepest} (Scylla's deepest draft)")
        unknown = [d for d in self.datasets if d not in DATASET_NAMES]
        if unknown or not self.datasets:
            raise ScyllaError(f"unknown dataset(s) {', '.join(unknown) or 'none given'}; known: {', '.join(DATASET_NAMES)}")
        if self.epochs < 1 or self.prompts < 1 or self.max_new_tokens < 1 or self.top_k < 1 or self.depth < 1:
            raise ScyllaError("epochs, prompts, max-new-tokens, top-k and depth must be >= 1")
        for key in ("method", "layers", "pretrain_tokens", "sft_tokens", "name", "target", "dtype", "seed", "data_dir",
                    "epochs"):
            if key in self.train:
                raise ScyllaError(f"train option '{key}' is set by the scaling plan itself")
        for layers, tokens in self.points():  # every draft's training config, checked before anything runs
            self.train_config(layers, tokens, dtype="float32")

    def train_config(self, layers: int, tokens: int, dtype: str):
        """The recipe of one draft: the default recipe with this plan's budgets and options."""
        from scylla_impl.training import recipe
        from scylla_impl.training.config import TrainConfig

        unknown = set(self.train) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise ScyllaError(f"unknown training option(s) {', '.join(sorted(unknown))} in --train")
        overrides = dict(self.train, pretrain_tokens=tokens, name=draft_name(layers, tokens), seed=self.seed,
                         data_dir=self.data_dir, epochs=self.epochs, dtype=dtype)
        if self.sft_tokens is not None:
            overrides["sft_tokens"] = self.sft_tokens
        try:
            return recipe(METHOD, layers=layers, target=self.target, **overrides)
        except TypeError as err:  # a --train value of the wrong kind (seq_len=long) meets a comparison
            raise ScyllaError(f"--train: a value of the wrong type ({err})") from None

    def points(self) -> list[tuple[int, int]]:
        """(layers, pretraining tokens) of every draft, largest budget first, each once."""
        pts = []
        if "tokens" in self.series:
            pts += [(self.budget_layers, b) for b in self.budgets]
        if "layers" in self.series:
            pts += [(n, self.layers_budget) for n in self.layers]
        return sorted(set(pts), key=lambda p: (-p[1], p[0]))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def draft_name(layers: int, tokens: int) -> str:
    return f"{METHOD}-L{layers}-P{tokens}"


def check_plan(out: Path, plan: ScalingPlan) -> None:
    """Record the plan in OUT, or check that OUT holds the same one (a resume)."""
    path = out / PLAN_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ScyllaError(f"cannot read {path}: {err}") from None
        now = plan.to_dict()
        diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
        if diff:
            key, (was, new) = next(iter(diff.items()))
            raise ScyllaError(f"'{out}' holds a scaling run with {key}={was!r}, not {new!r}: run it again with the "
                              "same options to resume it, or choose another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(json.dumps(plan.to_dict(), indent=2).encode(), path)


def ensure_draft(plan: ScalingPlan, target, layers: int, tokens: int, out: Path, progress: str) -> Path:
    """The trained draft of one point: kept if finished, resumed if started, else trained."""
    from scylla_impl.trained import is_trained
    from scylla_impl.training import train
    from scylla_impl.training.run_folder import CONFIG_FILE, same_run

    folder = out / "drafts" / draft_name(layers, tokens)
    config = plan.train_config(layers, tokens, dtype=str(target.dtype).removeprefix("torch."))
    started = (folder / CONFIG_FILE).is_file()
    if started and not same_run(folder, config):
        raise ScyllaError(f"'{folder}' was trained with other options than this plan's; remove it or choose another --out")
    if is_trained(folder):
        return folder
    train(None if started else config, folder, resume=started, force=not started, target=target, progress=progress)
    return folder


def sweep_spec(plan: ScalingPlan, drafts: list[Path], out: Path, threads: int | None):
    from harness.spec import spec_from_dict

    return spec_from_dict({
        "target": plan.target, "methods": ["ar", METHOD], "draft": {METHOD: [str(d) for d in drafts]},
        "datasets": list(plan.datasets), "batch_sizes": [1], "top_k": [plan.top_k], "depths": [plan.depth],
        "temperatures": [0.0], "prompts": plan.prompts, "max_new_tokens": plan.max_new_tokens, "turns": "first",
        "data_dir": plan.data_dir, "dtype": plan.dtype, "threads": threads, "seed": plan.seed, "out": str(out / "sweep"),
    })


def run(plan: ScalingPlan, out: Path, *, threads: int | None = None, progress: str = "auto", echo=print) -> pd.DataFrame:
    """Train what is missing, measure what is missing, fit; returns the fits (also OUT/fits.parquet)."""
    from harness.progress import BarProgress
    from harness.runner import run_sweep
    from scylla_impl.target import Target

    check_plan(out, plan)
    points = plan.points()
    target = Target.load(plan.target, dtype=plan.dtype)
    drafts = []
    for i, (layers, tokens) in enumerate(points, 1):
        echo(f"[scaling] draft {i}/{len(points)}: {draft_name(layers, tokens)} "
             f"({layers} layer{'s' * (layers > 1)}, {tokens:,} pretraining tokens)")
        drafts.append(ensure_draft(plan, target, layers, tokens, out, progress))
    del target  # the sweep loads its own
    spec = sweep_spec(plan, drafts, out, threads)
    echo(f"[scaling] measuring tau of {len(drafts)} drafts on {len(plan.datasets)} datasets "
         f"(top_k {plan.top_k}, depth {plan.depth}, {plan.prompts} prompts each)")
    report = run_sweep(spec, Path(spec.out), resume=(Path(spec.out) / "results.parquet").is_file(),
                       retry_failed=True, progress=BarProgress())
    fits = fit_results(pd.read_parquet(report.results_path), plan)
    atomic_write_bytes(fits.to_parquet(index=False), out / FITS_FILE)
    return fits


def fit_results(results: pd.DataFrame, plan: ScalingPlan) -> pd.DataFrame:
    """One row per (series, dataset or 'pooled'): the fit of tau on log10 of the series' variable,
    over the series' drafts. Pooled tau is over the datasets every draft of the series has."""
    ok = results[(results["status"] == "ok") & (results["method"] == METHOD)]
    rows = []
    for series in plan.series:
        if series == "tokens":
            members = {draft_name(plan.budget_layers, b): b for b in plan.budgets}
        else:
            members = {draft_name(n, plan.layers_budget): n for n in plan.layers}
        names = ok["draft"].map(lambda d: Path(str(d)).name)
        cells = ok[names.isin(members)].assign(x=names[names.isin(members)].map(members))
        common = set.intersection(*(set(g["dataset"]) for _, g in cells.groupby("x"))) if len(cells) else set()
        groups = [(d, cells[cells["dataset"] == d]) for d in sorted(common)]
        groups.append(("pooled", cells[cells["dataset"].isin(common)]))
        for dataset, g in groups:
            points = sorted((x, pooled_tau(gx)) for x, gx in g.groupby("x"))
            fit = fit_log10([p[0] for p in points], [p[1] for p in points]) if points else None
            rows.append({
                "series": series, "variable": "pretrain_tokens" if series == "tokens" else "draft_layers",
                "dataset": dataset, "n": len(points),
                "alpha": fit.alpha if fit else None, "alpha_ci95": fit.alpha_ci95 if fit else None,
                "beta": fit.beta if fit else None, "r2": fit.r2 if fit else None,
                "x": [float(p[0]) for p in points], "tau": [float(p[1]) for p in points],
            })
    return pd.DataFrame(rows)


def describe(fits: pd.DataFrame) -> str:
    """The fits as text, with the paper's claim (a positive slope, a straight line) checked."""
    lines = []
    for series, g in fits.groupby("series", sort=False):
        what = "pretraining tokens (Thm 1.1)" if series == "tokens" else "draft layers (Thm 1.2)"
        lines.append(f"tau = alpha log10({what}) + beta")
        for r in g.itertuples():
            if r.alpha is None or pd.isna(r.alpha):
                lines.append(f"  {r.dataset:18s} no fit ({r.n} point{'s' * (r.n != 1)})")
                continue
            ci = "" if pd.isna(r.alpha_ci95) else f" +- {r.alpha_ci95:.3f}"
            verdict = ("positive slope" if r.alpha - (0 if pd.isna(r.alpha_ci95) else r.alpha_ci95) > 0
                       else "slope not shown positive")
            pts = ", ".join(f"{x:g}: {t:.2f}" for x, t in zip(r.x, r.tau))
            lines.append(f"  {r.dataset:18s} alpha {r.alpha:+.3f}{ci}  R^2 {r.r2:.2f}  ({verdict}; {pts})")
    return "\n".join(lines)


__all__ = ["FITS_FILE", "PLAN_FILE", "SERIES", "ScalingPlan", "check_plan", "describe", "draft_name",
           "ensure_draft", "fit_results", "run", "sweep_spec"]
