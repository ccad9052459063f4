"""`scylla train`: train an EAGLE-2, EAGLE-3 or Scylla draft for a target (pretraining, then SFT).

The training options are generated from `TrainConfig`'s fields (their help and default live
there, once); the options here are about the run, not the draft.

Multi-process: `torchrun --nproc-per-node 2 -m harness.cli train ...`, and across nodes with
c10d rendezvous (README, "On a cluster"); each process takes its share of every global batch.
"""

import typing

import click

from scylla_impl.training.config import METHOD_NAMES, RECIPE_NAMES, options, recipe_fields
from workloads.progress import MODES


def _config_options(fn):
    """One flag per TrainConfig option field, with the default the field (or the recipe) gives."""
    recipe_set = recipe_fields()
    for f in reversed(options()):
        opt = f.metadata["option"]
        if f.name in recipe_set:
            shown = "recipe"
        elif f.default is None or f.default == "":
            shown = None
        else:
            shown = f.default
        kind = click.Choice(opt.choices) if opt.choices else str if opt.parse else _value_type(f.type)
        fn = click.option(f"--{f.name.replace('_', '-')}", f.name, type=kind, default=None, metavar=opt.metavar,
                          help=opt.help + (f" [{shown}]" if shown is not None else ""))(fn)
    return fn


def _value_type(annotation) -> type:
    """int, float or str from a field's annotation (`int | None` -> int)."""
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return kinds[0] if kinds[0] in (int, float) else str


@click.command()
@click.option("--target", default="default", show_default=True, help="'default' (the embedded model) or a HF model folder")
@click.option("--method", type=click.Choice(METHOD_NAMES), default=None, help="draft architecture (required unless --resume)")
@click.option("--recipe", "budget", type=click.Choice(RECIPE_NAMES), default="default", show_default=True,
              help="token budget: default (first use, minutes) or long (the best tau this machine reaches; hours, resumable)")
@_config_options
@click.option("--no-decontaminate", "no_decontaminate", is_flag=True, default=None,
              help="keep training documents that contain evaluation prompts")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="run folder (default: the target's drafts folder / NAME)")
@click.option("--resume", is_flag=True, help="continue the run in --out from its newest checkpoint")
@click.option("--force", is_flag=True, help="delete what --out holds and start over")
@click.option("--progress", type=click.Choice(MODES), default="auto", show_default=True,
              help="auto: a bar on a terminal, a line a minute otherwise (logs, CI)")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads per process (default: torch's)")
@click.pass_context
def train(ctx, target, method, budget, no_decontaminate, out, resume, force, progress, threads, **config) -> None:
    """Train a draft for --target: pretraining on the general corpus, then SFT on chat."""
    from pathlib import Path

    from harness.quiet import quiet_libraries
    from scylla_impl.target_path import model_path
    from scylla_impl.training.config import recipe
    from workloads.errors import ScyllaError
    from workloads.files import check_writable_folder

    if out is not None:  # before any model loads
        check_writable_folder(out, "--out")
    if threads:  # before the config measures which precision `auto` is
        import torch

        torch.set_num_threads(threads)
    # A wrong value fails in the config, before the engine loads (TrainConfig.check_values).
    parsers = {f.name: f.metadata["option"].parse for f in options()}
    given = {k: parsers[k](v) if parsers[k] is not None else v for k, v in config.items() if v is not None}
    if no_decontaminate:
        given["decontaminate"] = False
    if resume:
        from scylla_impl.training.config import CONFIG_FILE, TrainConfig

        if out is None:
            raise ScyllaError("--resume needs --out: the run folder to continue")
        saved = Path(out) / CONFIG_FILE
        if not saved.is_file():
            raise ScyllaError(f"nothing to resume in '{out}': it holds no {CONFIG_FILE}")
        stored = TrainConfig.load(saved)
        explicit_target = ctx.get_parameter_source("target").name != "DEFAULT"
        config = None
        if given or method is not None or explicit_target:  # options given again must match the run
            values = {**stored.to_dict(), **given}
            values["method"] = method or stored.method
            values["target"] = target if explicit_target else stored.target
            config = TrainConfig.from_dict(values)
        from scylla_impl.target import Target
        from scylla_impl.training.loop import train as run

        quiet_libraries()
        tgt = Target.load(target if explicit_target else stored.target, dtype=stored.dtype, device=stored.device)
        result = run(config, out, resume=True, target=tgt, progress=progress)
    else:
        if method is None:
            raise ScyllaError(f"--method is required ({', '.join(METHOD_NAMES)})")
        model_path(target)  # a mistyped --target is one line before `auto` times the precisions
        config = recipe(method, budget=budget, target=target, **given)
        from scylla_impl.training.loop import train as run

        quiet_libraries()
        result = run(config, out, force=force, progress=progress)
    final = result.final
    accs = " ".join(f"{final[k]:.2f}" for k in sorted(final) if k.startswith("eval_acc_"))
    click.echo(f"trained {result.steps} steps, {result.tokens} tokens in {result.seconds / 60:.1f} min "
               f"(target features {result.feature_seconds / 60:.1f} min); "
               f"accuracy by position {accs}; simulated acceptance {final.get('sim_accept', float('nan')):.2f}", err=True)
    click.echo(str(result.out))
