"""The `scylla` command. Subcommands live in their own modules and load lazily, so
`scylla --help` does not import torch, and each layer keeps its own command."""

import importlib
import os
import sys

import click

from workloads.errors import ScyllaError, os_error

# name -> "module:attribute" of a click command. One registry, no if-chains.
COMMANDS = {
    "generate": "harness.commands.generate:generate",
    "models": "harness.commands.models:models",
    "datasets": "harness.commands.datasets:datasets",
    "profile": "harness.commands.profile:profile",
    "train": "harness.commands.train:train",
    "sweep": "harness.commands.sweep:sweep",
    "scaling": "harness.commands.scaling:scaling",
    "report": "reports.cli:report",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as err:
            if not err.name or not err.name.startswith(module.split(".")[0]):
                raise
            raise click.ClickException(f"'scylla {name}' is not available in this build") from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """scylla-bench: speculative decoding benchmarks (Scylla, EAGLE-2, EAGLE-3) and roofline profiling."""


def main() -> None:
    """Console entry point. Exit status: 0 done; 1 bad input or a failed run (one `error:` line);
    2 a wrong option or value (one `error:` line); 130 interrupted; 143 terminated (SIGTERM)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        cli.main(prog_name="scylla", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as err:  # a wrong option or value: one line, exit 2
        where = err.ctx.command_path if err.ctx is not None else "scylla"
        click.echo(f"error: {err.format_message()} (see `{where} --help`)", err=True)
        sys.exit(2)
    except click.ClickException as err:
        click.echo(f"error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except ScyllaError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except OSError as err:  # the machine's failure (a full disk, a read-only mount) that no check caught first
        click.echo(f"error: {os_error(err, 'read or write')}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
