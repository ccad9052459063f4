"""The package's architecture, as ARCHITECTURE.md states it: imports point down the layers, and
no module hides a missing or renamed project module behind a fallback."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Each layer may import the ones listed for it (itself included), never those above it.
MAY_IMPORT = {
    "workloads": {"workloads"},
    "scylla_impl": {"scylla_impl", "workloads"},
    "roofline": {"roofline", "scylla_impl", "workloads"},
    "harness": {"harness", "scylla_impl", "roofline", "workloads"},
    "reports": {"reports", "harness", "scylla_impl", "roofline", "workloads"},
}


def modules():
    for layer in MAY_IMPORT:
        for path in sorted((REPO / layer).rglob("*.py")):
            yield layer, path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def project_imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node, a.name.split(".")[0]) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node, node.module.split(".")[0]


# "package.module:attribute", how the registries (methods, executors) name what they import on first use
LAZY_IMPORT = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


def lazy_imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and LAZY_IMPORT.fullmatch(node.value):
            yield node, node.value.split(".")[0]


def test_imports_point_down_the_layers():
    wrong = [f"{path.relative_to(REPO)}:{node.lineno} imports {top}"
             for layer, path, tree in modules()
             for node, top in [*project_imports(tree), *lazy_imports(tree)]
             if top in MAY_IMPORT and top not in MAY_IMPORT[layer]]
    assert not wrong, wrong


def test_every_command_is_registered_and_loads():
    """The `scylla` subcommands are entry points (pyproject.toml), so reports/ adds `report`
    without the harness naming a layer above it; each loads to the command of its name."""
    import tomllib

    import click

    from harness.cli import COMMAND_GROUP, commands

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"][COMMAND_GROUP]
    installed = commands()
    assert {name: ep.value for name, ep in installed.items()} == declared  # the install is not stale
    for name, entry in installed.items():
        command = entry.load()
        assert isinstance(command, click.Command) and command.name == name
        assert entry.module.split(".")[0] in MAY_IMPORT


def test_no_fallback_around_a_project_import():
    """`try: from workloads... except ImportError:` turns a broken refactor into silently other
    behaviour; only what the user's machine may lack (nvtx, triton, pynvml) may be optional.
    A broad `except Exception` (or a bare except) around one hides it just as well."""
    hiding = ("ImportError", "ModuleNotFoundError", "Exception", "BaseException")
    wrong = []
    for _layer, path, tree in modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Try):
                continue
            catches = {ast.unparse(h.type) if h.type is not None else "BaseException" for h in node.handlers}
            if not any(name in c for c in catches for name in hiding):
                continue
            inner = [top for stmt in node.body for _n, top in project_imports(stmt)]
            wrong += [f"{path.relative_to(REPO)}:{node.lineno} guards an import of {top}" for top in inner
                      if top in MAY_IMPORT]
    assert not wrong, wrong


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_no_getattr_fallback_on_a_project_module(layer):
    wrong = [f"{path.relative_to(REPO)}:{node.lineno}" for lay, path, tree in modules() if lay == layer
             for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
             and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in MAY_IMPORT]
    assert not wrong, wrong


def _commands():
    from harness.cli import commands

    return sorted(commands())


def run_cli(argv: list[str]):
    """`scylla ARGV` in a fresh interpreter: (exit status, stdout, stderr, which of torch and
    transformers it imported)."""
    probe = ("import sys\nfrom harness.cli import main\nsys.argv = ['scylla', *sys.argv[1:]]\n"
             "try:\n    main()\nfinally:\n    print(sorted({'torch', 'transformers'} & set(sys.modules)), file=sys.stderr)\n")
    run = subprocess.run([sys.executable, "-c", probe, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    *said, loaded = run.stderr.strip().splitlines() or [""]
    return run.returncode, run.stdout, "\n".join(said), loaded


@pytest.mark.parametrize("argv", [["--help"], *([name, "--help"] for name in _commands())], ids=" ".join)
def test_help_loads_no_engine(argv):
    """`scylla --help` lists every command with its help, which imports each command's module:
    none of them may load torch or transformers for it (3-4 s on two cores, before a word shows)."""
    code, out, err, loaded = run_cli(argv)
    assert code == 0 and "Usage: scylla" in out, err[-2000:]
    assert loaded == "[]", err[-2000:]


@pytest.mark.parametrize(("argv", "says"), [
    (["--method", "eagle2", "--lr", "-1"], "lr must be a positive number, got -1.0"),
    (["--method", "scylla", "--seq-len", "2"], "seq-len must be at least 4, got 2"),
    (["--method", "eagle3", "--sft-answers", "sharegpt", "--sft-mix", "code=1"], "only ShareGPT prompts come with answers"),
    (["--method", "eagle2", "--pretrain-tokens", "0", "--sft-tokens", "0"], "nothing to train"),
    (["--resume"], "--resume needs --out: the run folder to continue"),
    (["--method", "scylla", "--layers", "0"], "--layers must be >= 1, got 0"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_wrong_training_value_fails_before_the_engine_loads(argv, says):
    code, _, err, loaded = run_cli(["train", *argv])
    assert code == 1 and err.startswith(f"error: {says}") and len(err.splitlines()) == 1, err[-2000:]
    assert loaded == "[]", err[-2000:]


@pytest.mark.parametrize(("argv", "says"), [
    (["--top-k", "0"], "top_k must be >= 1, got 0"),
    (["--temperature", "inf"], "temperature must be a finite number >= 0, got inf"),
    (["--temperature", "nan"], "temperature must be a finite number >= 0, got nan"),
    (["--device", "gpu0"], "--device gpu0: not a device name"),
    (["--top-k", "2", "--depth", "2", "--total-tokens", "40"], "total_tokens 40 is larger than the tree's pool"),
    (["--prompt", "   "], "empty prompt"),
    (["--depth", "3"], "--depth and --total-tokens shape a fixed tree: give --top-k as a number too (EAGLE-2's "
                       "default tree is --top-k 10 --depth 5 --total-tokens 60)"),
    (["--top-k", "auto", "--total-tokens", "9"], "--depth and --total-tokens shape a fixed tree"),
    # bytes from a latin-1 terminal, kept by Python as a lone surrogate
    (["--prompt", "caf\udce9"], "the user message is not UTF-8 text (character 3)"),
    (["--system-prompt", "\udce9t\udce9"], "the system message is not UTF-8 text (character 0)"),
    (["--method", "ar"], "--draft applies to --method spec; --method ar decodes without a draft"),
    (["--method", "ar", "--top-k", "4", "--vs-ar"], "--draft, --top-k, --vs-ar apply to --method spec"),
    (["--draft", "lookup", "--layers", "3"], "--layers sizes a random draft (--draft random:scylla --layers N); "
                                             "it does not apply to lookup"),
    (["--draft", "/no/such/ckpt"], "draft '/no/such/ckpt' not found: give a checkpoint folder"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_wrong_decode_value_fails_before_the_engine_loads(argv, says):
    base = ["generate", "--method", "spec", "--draft", "random:eagle2", "--max-new-tokens", "4"]
    code, _, err, loaded = run_cli([*base, *(["--prompt", "hi"] if "--prompt" not in argv else []), *argv])
    assert code == 1 and err.startswith(f"error: {says}") and len(err.splitlines()) == 1, err[-2000:]
    assert loaded == "[]", err[-2000:]


@pytest.mark.parametrize("command", [["generate", "--prompt", "hi"], ["train", "--method", "eagle2"],
                                     ["profile", "--quick"], ["sweep", "--methods", "ar", "--datasets", "gsm8k"]],
                         ids=lambda c: c[0])
@pytest.mark.parametrize(("target", "says"), [("/no/such/model", "no such folder"),
                                              ("tests", "the folder has no config.json")])
def test_a_target_that_is_no_model_is_one_line_before_the_engine_loads(command, target, says, tmp_path):
    code, _, err, loaded = run_cli([*command, "--target", target, "--out", str(tmp_path / "out")]
                                   if command[0] != "generate" else [*command, "--target", target])
    assert code == 1 and err.startswith(f"error: cannot load target '{target}': {says}"), err[-2000:]
    assert len(err.splitlines()) == 1 and loaded == "[]", err[-2000:]
    assert not (tmp_path / "out").exists()


def test_a_source_tree_never_installed_says_so(monkeypatch):
    import click

    from harness import cli

    monkeypatch.setattr(cli, "entry_points", lambda group: [])  # no metadata: what an uninstalled tree has
    cli.commands.cache_clear()  # read once per process; an earlier test may have read the installed ones
    with pytest.raises(click.ClickException, match="scylla-bench is not installed, so it has no commands: pip install -e ."):
        cli.commands()


def test_a_report_loads_no_engine(tmp_path):
    """`scylla report` reads Parquet and JSON and draws: it may not load torch or transformers,
    which cost 1.5 s on two cores before the report's first check (a bad folder waited on them)."""
    fixtures = REPO / "tests" / "fixtures"
    code, _, err, loaded = run_cli(["report", str(fixtures / "report_results"), "--profile",
                                    str(fixtures / "report_profile_cpu"), "-o", str(tmp_path / "report.html")])
    assert code == 0 and (tmp_path / "report.html").is_file(), err[-2000:]
    assert loaded == "[]", err[-2000:]
