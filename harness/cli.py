"""The `scylla` command. Subcommands live in their own modules and load lazily, so
`scylla --help` does not import torch, and each layer keeps its own command."""

import functools
import os
import sys
from importlib.metadata import EntryPoint, entry_points

import click

from workloads.errors import ScyllaError, os_error

# pyproject.toml's [project.entry-points."scylla.commands"]: name -> "module:command". The
# registry lives in the package's metadata so that reports/ (above this layer) adds `report`
# without the harness importing upwards.
COMMAND_GROUP = "scylla.commands"


@functools.cache  # `scylla --help` asks once for the list and once per command
def commands() -> dict[str, EntryPoint]:
    found = {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}
    if not found:  # run from a source tree that was never installed
        raise click.ClickException("scylla-bench is not installed, so it has no commands: "
                                   "pip install -e . (or run it through nox)")
    return found


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(commands())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = commands().get(name)
        return entry.load() if entry is not None else None


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
