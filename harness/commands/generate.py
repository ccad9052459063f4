"""`scylla generate`: decode prompts with the AR baseline or speculative decoding."""

import json

import click

from scylla_impl import compiled, devices, dtypes
from scylla_impl.methods import TRAINED

DRAFT_HELP = "checkpoint folder, oracle, or " + "|".join(f"random:{m}" for m in TRAINED)


@click.command()
@click.option("--prompt", "prompts", multiple=True, required=True, help="user message; repeat for a batch")
@click.option("--target", default="default", show_default=True, help="'default' or a HF model path/id")
@click.option("--method", type=click.Choice(["ar", "spec"]), default="spec", show_default=True)
@click.option("--draft", default=None, help=DRAFT_HELP + " (default: the trained Scylla draft)")
@click.option("--layers", type=int, default=None, help="decoder layers of a random scylla draft")
@click.option("--top-k", type=int, default=10, show_default=True)
@click.option("--depth", type=int, default=5, show_default=True)
@click.option("--total-tokens", type=int, default=60, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--dtype", type=click.Choice(dtypes.CHOICES), default=dtypes.AUTO, show_default=True,
              help=dtypes.DECODE_HELP)
@click.option("--device", default="cpu", show_default=True, help=devices.HELP)
@click.option("--compile", "compile_steps", is_flag=True, help=compiled.HELP)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--system-prompt", default=None, help="system message for the chat template")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def generate(prompts, target, method, draft, layers, top_k, depth, total_tokens, temperature, top_p,
             max_new_tokens, dtype, device, compile_steps, seed, system_prompt, as_json) -> None:
    """Generate replies to --prompt with the target, speculatively or not."""
    import torch

    from harness.quiet import quiet_libraries
    from scylla_impl.decode import DecodeConfig
    from scylla_impl.decode import generate as run
    from scylla_impl.drafts import load_draft
    from scylla_impl.target import Target
    from workloads.chat import render_chat
    from workloads.errors import ScyllaError

    quiet_libraries()
    if any(not p.strip() for p in prompts):
        raise ScyllaError("empty prompt: give each --prompt some text")
    config = DecodeConfig(top_k=top_k, depth=depth, total_tokens=total_tokens, temperature=temperature,
                          top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    config.validate(speculative=method == "spec")
    torch.manual_seed(seed)
    tgt = Target.load(target, dtype=dtype, device=device, compile=compile_steps)
    drafter = None
    if method == "spec":
        drafter = load_draft(draft or _default_draft(tgt), tgt, layers=layers, seed=seed)
    # The sweep's own formatting: the tokenizer's chat template, or the plain fallback for a
    # tokenizer that has none (base models, GGUF conversions).
    texts = [render_chat(tgt.tokenizer, [{"role": "user", "content": p}], system_prompt) for p in prompts]
    ids = [list(tgt.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    result = run(tgt, ids, drafter, config)
    if as_json:
        click.echo(json.dumps({
            "outputs": [{"text": t, "token_ids": i} for t, i in zip(result.texts, result.token_ids)],
            "steps": result.stats.steps,
            "tau": result.stats.tau,
            "tokens_per_s": result.tokens_per_s,
        }))
        return
    for text in result.texts:
        click.echo(text)
        click.echo("-" * 40)
    click.echo(f"steps {result.stats.steps}  tau {result.stats.tau:.2f}  tokens/s {result.tokens_per_s:.1f}", err=True)


def _default_draft(target) -> str:
    from scylla_impl.trained import default_draft_spec

    return default_draft_spec(target, "scylla")
