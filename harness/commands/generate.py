"""`scylla generate`: decode prompts with the AR baseline or speculative decoding."""

import json

import click

from harness.spec import AUTO
from scylla_impl import compiled, devices, dtypes
from scylla_impl.decode_config import DecodeConfig
from scylla_impl.methods import TRAINED, TRAINING_FREE, check_draft_spec
from scylla_impl.target_path import model_path
from workloads.chat import check_text
from workloads.errors import ScyllaError

DRAFT_HELP = ("checkpoint folder, " + ", ".join(f"{m} (training-free)" for m in TRAINING_FREE)
              + ", oracle (the target itself, for tests), or " + "|".join(f"random:{m}" for m in TRAINED))
# EAGLE-2's default tree (top_k, depth, total_tokens), DecodeConfig's: what a number --top-k
# grows unless --depth and --total-tokens say otherwise.
EAGLE2_TREE = (DecodeConfig.top_k, DecodeConfig.depth, DecodeConfig.total_tokens)


def _top_k(ctx, param, value: str) -> str | int:
    if value == AUTO:
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a whole number", ctx, param) from None


@click.command()
@click.option("--prompt", "prompts", multiple=True, required=True, help="user message; repeat for a batch")
@click.option("--target", default="default", show_default=True, help="'default' or a HF model path/id")
@click.option("--method", type=click.Choice(["ar", "spec"]), default="spec", show_default=True)
@click.option("--draft", default=None, help=DRAFT_HELP + " (default: the trained Scylla draft)")
@click.option("--layers", type=int, default=None, help="decoder layers of a random scylla draft")
@click.option("--top-k", default=AUTO, show_default=True, callback=_top_k,
              help="children per tree node, or 'auto': the tree with the most predicted tokens/s for this draft "
                   "on this device, from its measured acceptance (replayed once and kept: a checkpoint folder's, "
                   "prompt lookup's) and costs timed now")
@click.option("--depth", type=int, default=None, help=f"tree depth, with a number --top-k [{EAGLE2_TREE[1]}]")
@click.option("--total-tokens", type=int, default=None,
              help=f"tokens verified per step, root included, with a number --top-k [{EAGLE2_TREE[2]}]")
@click.option("--lookup-tokens", type=click.IntRange(min=0), default=0, show_default=True,
              help="graft up to this many tokens of the prompt-lookup proposal (the text that followed the last "
                   "n-gram's earlier occurrence in the prompt or output) under each draft tree's root: the verify "
                   "keeps the longer of the draft's guess and the copy; top_k auto prices the tree with it")
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--dtype", type=click.Choice(dtypes.CHOICES), default=dtypes.AUTO, show_default=True,
              help=dtypes.DECODE_HELP)
@click.option("--device", default="cpu", show_default=True, help=devices.HELP)
@click.option("--compile", "compile_steps", is_flag=True, help=compiled.HELP)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--system-prompt", default=None, help="system message for the chat template")
@click.option("--vs-ar", is_flag=True, help="also decode the prompts without the draft, right after: the measured "
              "speedup, and at temperature 0 whether the outputs are AR's (near-ties aside)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def generate(prompts, target, method, draft, layers, top_k, depth, total_tokens, lookup_tokens, temperature, top_p,
             max_new_tokens, dtype, device, compile_steps, seed, system_prompt, vs_ar, as_json) -> None:
    """Generate replies to --prompt with the target, speculatively or not."""
    # Every plain value is checked before torch and the target load (4-5 s on two cores).
    _check_draft_options(method, draft, layers, top_k, depth, total_tokens, lookup_tokens, vs_ar)
    config = _decode_config(method, prompts, system_prompt, top_k, depth, total_tokens, temperature, top_p,
                            max_new_tokens, seed, lookup_tokens)
    devices.check_name(device)
    model_path(target)  # a mistyped --target is one line before the engine loads
    auto = top_k == AUTO
    import torch

    from harness.quiet import quiet_libraries
    from scylla_impl.decode import generate as run
    from scylla_impl.drafts import load_draft
    from scylla_impl.target import Target
    from workloads.chat import render_chat

    quiet_libraries()
    torch.manual_seed(seed)
    tgt = Target.load(target, dtype=dtype, device=device, compile=compile_steps)
    # The sweep's own formatting: the tokenizer's chat template, or the plain fallback for a
    # tokenizer that has none (base models, GGUF conversions).
    texts = [render_chat(tgt.tokenizer, [{"role": "user", "content": p}], system_prompt) for p in prompts]
    ids = [list(tgt.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    drafter, tree = None, None
    if method == "spec":
        name = draft or _default_draft(tgt)
        drafter = load_draft(name, tgt, layers=layers, seed=seed)
        if auto:
            config, tree = _auto_tree(tgt, drafter, name, ids, config)
    result = run(tgt, ids, drafter, config)
    against = _against_ar(tgt, ids, result, config, run) if vs_ar and drafter is not None else None
    if as_json:
        click.echo(json.dumps({
            "outputs": [{"text": t, "token_ids": i} for t, i in zip(result.texts, result.token_ids)],
            "steps": result.stats.steps,
            "tau": result.stats.tau,
            "tokens_per_s": result.tokens_per_s,
            "tree": tree,
            "vs_ar": against,
        }))
        return
    for text in result.texts:
        click.echo(text)
        click.echo("-" * 40)
    line = f"steps {result.stats.steps}  tau {result.stats.tau:.2f}  tokens/s {result.tokens_per_s:.1f}"
    if against is not None:
        same = {True: "  outputs = AR's", False: "  OUTPUTS DIFFER FROM AR'S", None: ""}[against["same_as_ar"]]
        line += f"  AR tokens/s {against['ar_tokens_per_s']:.1f}  speedup {against['speedup']:.2f}x{same}"
    click.echo(line, err=True)


def _check_draft_options(method, draft, layers, top_k, depth, total_tokens, lookup_tokens, vs_ar) -> None:
    """An option that only a draft reads is an error where it would do nothing: a user who gives
    --draft with --method ar, or --layers with a trained draft, meant something else."""
    if method == "ar":
        given = [name for name, is_given in [("--draft", draft is not None), ("--layers", layers is not None),
                                              ("--top-k", top_k != AUTO), ("--depth", depth is not None),
                                              ("--total-tokens", total_tokens is not None),
                                              ("--lookup-tokens", lookup_tokens > 0), ("--vs-ar", vs_ar)] if is_given]
        if given:
            raise ScyllaError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --method spec; "
                              "--method ar decodes without a draft")
        return
    if draft is not None:
        check_draft_spec(draft)
    if layers is not None and not (draft or "").startswith("random:"):
        raise ScyllaError("--layers sizes a random draft (--draft random:scylla --layers N); it does not apply to "
                          f"{draft or 'the default trained draft'}")


def _decode_config(method, prompts, system_prompt, top_k, depth, total_tokens, temperature, top_p, max_new_tokens,
                   seed, lookup_tokens):
    """The decode's config from the options, or the one-line error a bad value gets. A number --top-k
    grows EAGLE-2's default tree; auto starts from it and prices the tree later."""
    if any(not p.strip() for p in prompts):
        raise ScyllaError("empty prompt: give each --prompt some text")
    for p in prompts:
        check_text(p, "the user message")
    if system_prompt is not None:
        check_text(system_prompt, "the system message")
    auto = top_k == AUTO
    if auto and method == "spec" and (depth is not None or total_tokens is not None):
        raise ScyllaError("--depth and --total-tokens shape a fixed tree: give --top-k as a number too (EAGLE-2's "
                          "default tree is --top-k {} --depth {} --total-tokens {})".format(*EAGLE2_TREE))
    fixed_k, fixed_depth, fixed_tokens = EAGLE2_TREE
    config = DecodeConfig(top_k=fixed_k if auto else top_k, depth=fixed_depth if depth is None else depth,
                          total_tokens=fixed_tokens if total_tokens is None else total_tokens,
                          temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                          lookup_tokens=lookup_tokens)
    config.validate(speculative=method == "spec")
    return config


def _against_ar(target, ids, result, config, run) -> dict:
    """The same prompts decoded without the draft just after: tokens/s, and at T=0 the lossless
    check the sweep makes (a parting at a near-tie, a rival within rounding, does not count)."""
    from harness.metrics import compare_outputs, speedup
    from harness.storage import Reference

    ar = run(target, ids, None, config)
    same = None
    if config.temperature == 0:
        check = compare_outputs(dict(enumerate(result.token_ids)),
                                {i: Reference(t, r) for i, (t, r) in enumerate(zip(ar.token_ids, ar.rivals))})
        same = check.lossless
    return {"ar_tokens_per_s": ar.tokens_per_s, "speedup": speedup(result.tokens_per_s, ar.tokens_per_s),
            "same_as_ar": same}


def _auto_tree(target, draft, name: str, ids: list[list[int]], config):
    """(config with the tree `top_k auto` picks, the choice as JSON): priced with the draft's
    measured acceptance where it can be kept (a checkpoint folder, prompt lookup), else
    EAGLE-2's default tree, said so."""
    import dataclasses

    from harness.auto_trees import calibration_file, generate_tree
    from scylla_impl.decode import check_context

    say = lambda line: click.echo(line, err=True)  # noqa: E731
    if calibration_file(name) is None:
        say(f"top_k auto prices trees with a draft's measured acceptance, which {name} does not keep: "
            "decoding with EAGLE-2's default tree (k={} d={} n={}); give --top-k to choose another".format(*EAGLE2_TREE))
        return config, None
    # A prompt the context cannot hold even without a tree is refused now, not after pricing trees
    # (a minute on first use); the decode checks the chosen tree's depth too.
    longest = max(map(len, ids))
    check_context(target, longest, config, speculative=False)
    # Costs timed where this decode runs: its longest prompt, halfway through its new tokens.
    cached = longest + config.max_new_tokens // 2
    best, ar = generate_tree(target, draft, name, len(ids), config.max_new_tokens, cached, echo=say,
                             lookup_tokens=config.lookup_tokens)
    verdict = "" if best.tokens_per_s > ar.tokens_per_s else ", slower than AR: no tree pays here"
    say(f"auto tree: {best.label()}, {best.accepted:.2f} draft tokens accepted a step, predicted "
        f"{best.tokens_per_s:.1f} tokens/s against AR's {ar.tokens_per_s:.1f}{verdict}")
    config = dataclasses.replace(config, top_k=best.top_k, depth=best.depth, total_tokens=best.total_tokens)
    return config, {"choice": best.to_json(), "ar": ar.to_json()}


def _default_draft(target) -> str:
    from scylla_impl.trained import default_draft_spec

    return default_draft_spec(target, "scylla")
