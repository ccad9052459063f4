"""`scylla datasets`: what the six evaluation datasets are here, and what the target sees."""

import json
from dataclasses import asdict
from pathlib import Path

import click

from workloads.errors import ScyllaError

MT_BENCH_PLACEHOLDER = "<the model's own answer to turn 1>"


@click.group()
def datasets() -> None:
    """The six evaluation datasets: sources, record counts, checksums, formatted prompts."""


@datasets.command("list")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of EAGLE-format files (<dir>/<name>/question.jsonl); default $SCYLLA_DATA_DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_datasets(data_dir: Path | None, as_json: bool) -> None:
    """Name, record count, source and checksum of all six datasets."""
    from workloads import DATASET_NAMES, dataset_info
    from workloads.datasets import resolve_data_dir

    resolve_data_dir(data_dir)  # a bad --data-dir is one error, not six
    infos, missing = [], {}
    for name in DATASET_NAMES:
        try:
            infos.append(dataset_info(name, data_dir))
        except ScyllaError as err:  # list the others anyway: the table shows what is missing
            missing[name] = str(err)
    if as_json:
        rows = [asdict(i) for i in infos] + [{"name": n, "error": e} for n, e in missing.items()]
        click.echo(json.dumps(rows, indent=2))
    else:
        rows = [("dataset", "records", "source", "sha256", "licence")]
        rows += [(i.name, str(i.n_records), i.source, i.checksum[:12], i.license or "unknown") for i in infos]
        rows += [(name, "-", "unavailable", "-", "") for name in missing]
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        for row in rows:
            click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    if missing:
        first = next(iter(missing.values()))
        raise ScyllaError(f"{len(missing)} of {len(DATASET_NAMES)} datasets unavailable; {first}")


@datasets.command("show")
@click.argument("name")
@click.option("-n", "count", type=click.IntRange(min=1), default=3, show_default=True, help="Records to show.")
@click.option("--target", default="default", show_default=True,
              help="Whose chat template to use: 'default' (the embedded model) or a model/tokenizer folder.")
@click.option("--system-prompt", default=None, help="System prompt (default: the template's own).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of EAGLE-format files; default $SCYLLA_DATA_DIR.")
def show(name: str, count: int, target: str, system_prompt: str | None, data_dir: Path | None) -> None:
    """The first records of NAME, formatted exactly as the target would see them."""
    from workloads import chat, dataset_info, load_dataset

    prompts = load_dataset(name, data_dir, n=count)
    info = dataset_info(name, data_dir)
    tokenizer = _tokenizer(target)
    template = "fallback (the tokenizer has none)" if chat.uses_fallback_template(tokenizer) else "tokenizer's own"
    click.echo(f"{info.name}: {info.n_records} records from {info.source} ({info.selection})")
    click.echo(f"  sha256 {info.checksum}  licence: {info.license or 'unknown'}")
    click.echo(f"  chat template: {template}, hash {chat.template_hash(tokenizer, system_prompt)}")
    for prompt in prompts:
        answers: list[str] = []
        for turn in range(len(prompt.turns)):
            ids = chat.prompt_token_ids(tokenizer, prompt, system_prompt, turn, answers)
            click.echo(f"\n--- {prompt.id} [{prompt.category or '-'}] turn {turn + 1}/{len(prompt.turns)}, {len(ids)} tokens")
            click.echo(chat.prompt_text(tokenizer, prompt, system_prompt, turn, answers))
            answers.append(MT_BENCH_PLACEHOLDER)


def _tokenizer(target: str):
    from transformers import AutoTokenizer

    if target == "default":
        from scylla_impl.embedded import ensure_default_model

        path = ensure_default_model()
    else:
        path = Path(target).expanduser()
        if not path.is_dir():
            raise ScyllaError(f"--target {target}: not 'default' and not a model or tokenizer folder")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ScyllaError(f"--target {target}: no tokenizer could be loaded from {path} ({err})") from None
