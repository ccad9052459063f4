"""`scylla train`: train an EAGLE-2, EAGLE-3 or Scylla draft for a target (pretraining, then SFT).

Multi-process: `torchrun --nproc-per-node 2 -m harness.cli train ...` (each process takes
its share of every global batch; gloo on CPU).
"""

import click

from scylla_impl import dtypes
from scylla_impl.training.config import AUTOCAST, METHOD_NAMES, RECIPE_NAMES, SFT_ANSWERS


@click.command()
@click.option("--target", default="default", show_default=True, help="'default' (the embedded model) or a HF model folder")
@click.option("--method", type=click.Choice(METHOD_NAMES), default=None, help="draft architecture (required unless --resume)")
@click.option("--layers", type=int, default=None, help="decoder layers of a scylla draft (default 1)")
@click.option("--recipe", "budget", type=click.Choice(RECIPE_NAMES), default="default", show_default=True,
              help="token budget: default (first use, minutes) or long (the best tau this machine reaches; hours, resumable)")
@click.option("--pretrain-tokens", default=None, help="stage-1 budget, e.g. 16k, 1.5M (default: the method's recipe)")
@click.option("--sft-tokens", default=None, help="stage-2 (chat SFT) budget (default: the method's recipe)")
@click.option("--seq-len", type=int, default=None, help="packed sequence length [256]")
@click.option("--batch-size", type=int, default=None, help="global batch in sequences [4]")
@click.option("--micro-batch", type=int, default=None, help="sequences per forward per process [4]")
@click.option("--epochs", type=int, default=None, help="passes over each stage's data (later passes read cached features) [recipe]")
@click.option("--lr", type=float, default=None, help="peak learning rate of both stages [1e-3]")
@click.option("--ttt-steps", type=int, default=None, help="unrolled steps trained (training-time test)")
@click.option("--ce-fraction", type=float, default=None, help="share of positions scored by the CE [1.0]")
@click.option("--ce-weight", type=float, default=None, help="weight of the soft CE beside the feature regression")
@click.option("--draft-vocab", type=int, default=None,
              help="reduced draft vocabulary: the N most frequent trained tokens; 0 = the target's full vocabulary "
                   "(EAGLE-2 as published: --draft-vocab 0 --ttt-steps 1 --sft-answers sharegpt)")
@click.option("--sft-answers", type=click.Choice(SFT_ANSWERS), default=None,
              help="SFT on the target's own greedy answers to ShareGPT prompts (self-distillation) or on ShareGPT's")
@click.option("--sft-mix", default=None, metavar="SOURCE=SHARE,...",
              help="shares of the SFT prompts by source (sharegpt, code, math), e.g. sharegpt=2,code=1,math=1 "
                   "[recipe]; code and math need --sft-answers target")
@click.option("--autocast", type=click.Choice(AUTOCAST), default=None,
              help="bf16 autocast of the draft's training: auto = where measured faster than fp32 [auto]")
@click.option("--features", type=click.Choice(["cache", "online"]), default=None, help="target features cached on disk or recomputed [cache]")
@click.option("--pretrain-data", default=None, help="a text file or folder of .txt files to pretrain on instead of the default mix")
@click.option("--no-decontaminate", "no_decontaminate", is_flag=True, default=None,
              help="keep training documents that contain evaluation prompts")
@click.option("--seed", type=int, default=None, help="[0]")
@click.option("--dtype", type=click.Choice(dtypes.CHOICES), default=None,
              help="target precision for its features and labels; auto: as decoding's default (bf16 where native and faster) [auto]")
@click.option("--device", default=None, help="[cpu]")
@click.option("--checkpoint-every", type=int, default=None, help="optimizer steps between checkpoints [50]")
@click.option("--log-every", type=int, default=None, help="optimizer steps between accuracy evaluations [10]")
@click.option("--name", default=None, help="save as drafts_dir(target)/NAME (default: eagle2, eagle3, scylla-<layers>)")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="run folder (default: the target's drafts folder / NAME)")
@click.option("--resume", is_flag=True, help="continue the run in --out from its newest checkpoint")
@click.option("--force", is_flag=True, help="delete what --out holds and start over")
@click.option("--progress", type=click.Choice(["auto", "bar", "lines", "none"]), default="auto", show_default=True,
              help="auto: a bar on a terminal, a line a minute otherwise (logs, CI)")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads per process (default: torch's)")
@click.pass_context
def train(ctx, target, method, layers, budget, pretrain_tokens, sft_tokens, seq_len, batch_size, micro_batch, epochs, lr,
          ttt_steps, ce_fraction, ce_weight, draft_vocab, sft_answers, sft_mix, autocast, features, pretrain_data, no_decontaminate, seed, dtype, device, checkpoint_every, log_every, name,
          out, resume, force, progress, threads) -> None:
    """Train a draft for --target: pretraining on the general corpus, then SFT on chat."""
    from pathlib import Path

    import torch

    from harness.quiet import quiet_libraries
    from scylla_impl.training import parse_shares, parse_tokens, recipe
    from scylla_impl.training import train as run
    from workloads.errors import ScyllaError
    from workloads.files import check_writable_folder

    if out is not None:  # before any model loads
        check_writable_folder(out, "--out")
    quiet_libraries()
    if threads:
        torch.set_num_threads(threads)
    given = {
        "layers": layers, "seq_len": seq_len, "batch_size": batch_size, "micro_batch": micro_batch,
        "epochs": epochs, "lr": lr, "ttt_steps": ttt_steps, "ce_fraction": ce_fraction, "features": features,
        "draft_vocab": draft_vocab, "sft_answers": sft_answers, "ce_weight": ce_weight, "autocast": autocast,
        "pretrain_data": pretrain_data, "decontaminate": False if no_decontaminate else None, "seed": seed, "dtype": dtype, "device": device,
        "checkpoint_every": checkpoint_every, "log_every": log_every, "name": name,
        "pretrain_tokens": parse_tokens(pretrain_tokens) if pretrain_tokens is not None else None,
        "sft_tokens": parse_tokens(sft_tokens) if sft_tokens is not None else None,
        "sft_mix": parse_shares(sft_mix, "--sft-mix") if sft_mix is not None else None,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if resume:
        from scylla_impl.target import Target
        from scylla_impl.training.config import TrainConfig
        from scylla_impl.training.loop import CONFIG_FILE

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
        tgt = Target.load(target if explicit_target else stored.target, dtype=stored.dtype, device=stored.device)
        result = run(config, out, resume=True, target=tgt, progress=progress)
    else:
        if method is None:
            raise ScyllaError(f"--method is required ({', '.join(METHOD_NAMES)})")
        config = recipe(method, budget=budget, target=target, **given)
        result = run(config, out, force=force, progress=progress)
    final = result.final
    accs = " ".join(f"{final[k]:.2f}" for k in sorted(final) if k.startswith("eval_acc_"))
    click.echo(f"trained {result.steps} steps, {result.tokens} tokens in {result.seconds / 60:.1f} min "
               f"(target features {result.feature_seconds / 60:.1f} min); "
               f"accuracy by position {accs}; simulated acceptance {final.get('sim_accept', float('nan')):.2f}", err=True)
    click.echo(str(result.out))
