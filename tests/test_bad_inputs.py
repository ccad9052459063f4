"""Bad input to every subcommand, tried as a careless user would: each ends in one `error:` line
with a documented non-zero exit (1 bad input, 2 a wrong option), never a traceback, never a
silent success. Only cases that fail before a model loads, so the whole table stays cheap.

`python tests/test_bad_inputs.py [REPO]` runs the same table against any checkout and prints
the audit's classes (clean / traceback / silent / other), for a before-and-after count.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# (name, argv with {tmp} for a scratch folder, files to create first {relative path: bytes})
FILE = {"afile": b"not a folder\n"}
CASES: list[tuple[str, list[str], dict[str, bytes]]] = [
    # sweep
    ("sweep --out is a file", ["sweep", "--datasets", "gsm8k", "--out", "{tmp}/afile"], FILE),
    ("sweep --out under a file", ["sweep", "--datasets", "gsm8k", "--out", "{tmp}/afile/out"], FILE),
    ("sweep --batch-sizes 0", ["sweep", "--batch-sizes", "0", "--out", "{tmp}/o"], {}),
    ("sweep --top-k abc", ["sweep", "--top-k", "abc", "--out", "{tmp}/o"], {}),
    ("sweep --depths -1", ["sweep", "--depths", "-1", "--out", "{tmp}/o"], {}),
    ("sweep --temperatures -1", ["sweep", "--temperatures", "-1", "--out", "{tmp}/o"], {}),
    ("sweep --temperatures inf", ["sweep", "--temperatures", "inf", "--out", "{tmp}/o"], {}),
    ("sweep --top-p 2", ["sweep", "--top-p", "2", "--out", "{tmp}/o"], {}),
    ("sweep --prompts 0", ["sweep", "--prompts", "0", "--out", "{tmp}/o"], {}),
    ("sweep --max-new-tokens 0", ["sweep", "--max-new-tokens", "0", "--out", "{tmp}/o"], {}),
    ("sweep --total-tokens 0", ["sweep", "--total-tokens", "0", "--out", "{tmp}/o"], {}),
    ("sweep --draft without =", ["sweep", "--draft", "eagle2", "--out", "{tmp}/o"], {}),
    ("sweep --draft unknown method", ["sweep", "--draft", "medusa=x", "--out", "{tmp}/o"], {}),
    ("sweep --methods unknown", ["sweep", "--methods", "ar,medusa", "--out", "{tmp}/o"], {}),
    ("sweep --threads 0", ["sweep", "--threads", "0", "--out", "{tmp}/o"], {}),
    ("sweep --dtype float8", ["sweep", "--dtype", "float8", "--out", "{tmp}/o"], {}),
    ("sweep --device tpu", ["sweep", "--device", "tpu", "--out", "{tmp}/o"], {}),
    ("sweep --device cuda (no GPU)", ["sweep", "--device", "cuda", "--out", "{tmp}/o"], {}),
    ("sweep --executor unknown", ["sweep", "--executor", "slurm", "--out", "{tmp}/o"], {}),
    ("sweep --workers without ray", ["sweep", "--workers", "2", "--out", "{tmp}/o"], {}),
    ("sweep --ray-address not an address", ["sweep", "--executor", "ray", "--ray-address", "head", "--out", "{tmp}/o"], {}),
    ("sweep --ray-address nothing there", ["sweep", "--datasets", "gsm8k", "--executor", "ray", "--ray-address",
                                           "127.0.0.1:9", "--out", "{tmp}/o"], {}),
    ("sweep --data-dir missing", ["sweep", "--datasets", "gsm8k", "--data-dir", "{tmp}/none", "--out", "{tmp}/o"], {}),
    ("sweep --data-dir is a file", ["sweep", "--datasets", "gsm8k", "--data-dir", "{tmp}/afile", "--out", "{tmp}/o"], FILE),
    ("sweep --data-dir lacks the set", ["sweep", "--datasets", "gsm8k", "--data-dir", "{tmp}/d", "--out", "{tmp}/o"],
     {"d/alpaca/question.jsonl": b'{"question_id": 1, "turns": ["hi"]}\n'}),
    ("sweep dataset not JSON", ["sweep", "--datasets", "gsm8k", "--data-dir", "{tmp}/d", "--out", "{tmp}/o"],
     {"d/gsm8k/question.jsonl": b"{not json\n"}),
    ("sweep dataset not UTF-8", ["sweep", "--datasets", "gsm8k", "--data-dir", "{tmp}/d", "--out", "{tmp}/o"],
     {"d/gsm8k/question.jsonl": '{"question_id": 1, "turns": ["caf\u00e9"]}\n'.encode("latin-1")}),
    ("sweep dataset empty", ["sweep", "--datasets", "gsm8k", "--data-dir", "{tmp}/d", "--out", "{tmp}/o"],
     {"d/gsm8k/question.jsonl": b""}),
    ("sweep top-k auto, no profile", ["sweep", "--top-k", "auto", "--out", "{tmp}/o"], {}),
    ("sweep --profile missing", ["sweep", "--top-k", "auto", "--profile", "{tmp}/none", "--out", "{tmp}/o"], {}),
    ("sweep --profile not JSON", ["sweep", "--top-k", "auto", "--profile", "{tmp}/p", "--out", "{tmp}/o"],
     {"p/profile.json": b"{oops"}),
    ("sweep spec missing", ["sweep", "{tmp}/none.yaml", "--out", "{tmp}/o"], {}),
    ("sweep spec is a list", ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], {"s.yaml": b"- a\n- b\n"}),
    ("sweep spec bad YAML", ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], {"s.yaml": b"a: [\n"}),
    ("sweep spec not UTF-8", ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], {"s.yaml": "seed: 1 # \u00e9\n".encode("latin-1")}),
    ("sweep spec unknown key", ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], {"s.yaml": b"batch_size: 4\n"}),
    ("sweep spec wrong type", ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/o"], {"s.yaml": b"batch_sizes: {a: 1}\n"}),
    ("sweep --resume, inputs.json damaged", ["sweep", "--datasets", "gsm8k", "--resume", "--out", "{tmp}/o"],
     {"o/inputs.json": b"[1, 2]"}),
    ("sweep no --out", ["sweep", "--datasets", "gsm8k"], {}),
    ("sweep unknown flag", ["sweep", "--batch", "4"], {}),
    # generate
    ("generate no --prompt", ["generate"], {}),
    ("generate --method unknown", ["generate", "--prompt", "hi", "--method", "medusa"], {}),
    ("generate --max-new-tokens -1", ["generate", "--prompt", "hi", "--max-new-tokens", "-1"], {}),
    ("generate --dtype int8", ["generate", "--prompt", "hi", "--dtype", "int8"], {}),
    ("generate --target is a file", ["generate", "--prompt", "hi", "--target", "{tmp}/afile"], FILE),
    ("generate --top-p 0", ["generate", "--prompt", "hi", "--top-p", "0"], {}),
    # train
    ("train no --method", ["train", "--out", "{tmp}/o"], {}),
    ("train --method unknown", ["train", "--method", "medusa", "--out", "{tmp}/o"], {}),
    ("train --layers 0", ["train", "--method", "scylla", "--layers", "0", "--out", "{tmp}/o"], {}),
    ("train --lr -1", ["train", "--method", "eagle2", "--lr", "-1", "--out", "{tmp}/o"], {}),
    ("train --lr nan", ["train", "--method", "eagle2", "--lr", "nan", "--out", "{tmp}/o"], {}),
    ("train --pretrain-tokens abc", ["train", "--method", "eagle2", "--pretrain-tokens", "abc", "--out", "{tmp}/o"], {}),
    ("train --seq-len 0", ["train", "--method", "eagle2", "--seq-len", "0", "--out", "{tmp}/o"], {}),
    ("train --batch-size 0", ["train", "--method", "eagle2", "--batch-size", "0", "--out", "{tmp}/o"], {}),
    ("train --budget unknown", ["train", "--method", "eagle2", "--budget", "huge", "--out", "{tmp}/o"], {}),
    ("train --draft-vocab -5", ["train", "--method", "eagle2", "--draft-vocab", "-5", "--out", "{tmp}/o"], {}),
    ("train --threads -1", ["train", "--method", "eagle2", "--threads", "-1", "--out", "{tmp}/o"], {}),
    ("train --resume without --out", ["train", "--resume"], {}),
    ("train --resume, nothing there", ["train", "--resume", "--out", "{tmp}/none"], {}),
    ("train --resume, config not JSON", ["train", "--resume", "--out", "{tmp}/r"], {"r/train_config.json": b"{"}),
    ("train --resume, config a list", ["train", "--resume", "--out", "{tmp}/r"], {"r/train_config.json": b"[]"}),
    ("train --resume, config unknown key", ["train", "--resume", "--out", "{tmp}/r"],
     {"r/train_config.json": b'{"method": "eagle2", "nope": 1}'}),
    ("train --out is a file", ["train", "--method", "eagle2", "--out", "{tmp}/afile"], FILE),
    ("train --force on a user folder", ["train", "--method", "eagle2", "--force", "--pretrain-data", "{tmp}/none",
                                        "--out", "{tmp}/mine"], {"mine/notes.txt": b"keep me"}),
    ("train --pretrain-data missing", ["train", "--method", "eagle2", "--pretrain-data", "{tmp}/none", "--out", "{tmp}/o"], {}),
    # report
    ("report missing folder", ["report", "{tmp}/none", "-o", "{tmp}/r.html"], {}),
    ("report empty folder", ["report", "{tmp}/e", "-o", "{tmp}/r.html"], {"e/.keep": b""}),
    ("report on a text file", ["report", "{tmp}/afile", "-o", "{tmp}/r.html"], FILE),
    ("report garbage parquet", ["report", "{tmp}/g", "-o", "{tmp}/r.html"], {"g/results.parquet": b"PAR1garbage"}),
    ("report -o under a missing folder", ["report", "{tmp}/none", "-o", "{tmp}/no/such/r.html"], {}),
    ("report --profile missing", ["report", "{tmp}/e", "--profile", "{tmp}/none", "-o", "{tmp}/r.html"],
     {"e/.keep": b""}),
    ("report --profile not JSON", ["report", "{tmp}/e", "--profile", "{tmp}/p", "-o", "{tmp}/r.html"],
     {"e/.keep": b"", "p/profile.json": b"{"}),
    # profile
    ("profile --out is a file", ["profile", "--quick", "--out", "{tmp}/afile"], FILE),
    ("profile --device cuda (no GPU)", ["profile", "--device", "cuda", "--out", "{tmp}/o"], {}),
    ("profile --depth 0", ["profile", "--depth", "0", "--out", "{tmp}/o"], {}),
    ("profile no --out", ["profile"], {}),
    # datasets, models
    ("datasets show unknown", ["datasets", "show", "mmlu"], {}),
    ("datasets show --data-dir missing", ["datasets", "show", "gsm8k", "--data-dir", "{tmp}/none"], {}),
    ("models unknown subcommand", ["models", "delete"], {}),
    ("unknown subcommand", ["benchmark"], {}),
]

CUDA = ("cuda (no GPU)",)


def run_case(repo: Path, tmp: Path, argv: list[str], files: dict[str, bytes],
             timeout: float = 300) -> subprocess.CompletedProcess:
    for rel, data in files.items():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", SCYLLA_HOME=os.environ.get(
        "SCYLLA_HOME", str(Path.home() / ".cache" / "scylla-bench")))
    args = [a.replace("{tmp}", str(tmp)) for a in argv]
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=repo, env=env)


def outcome(done: subprocess.CompletedProcess) -> str:
    """The audit's classes: clean (one `error:` line, exit 1 or 2), traceback, silent (exit 0), other."""
    lines = done.stderr.strip().splitlines()
    if "Traceback" in done.stderr:
        return "traceback"
    if done.returncode == 0:
        return "silent"
    if done.returncode in (1, 2) and len(lines) == 1 and lines[0].startswith("error: "):
        return "clean"
    return "other"


@pytest.mark.parametrize(("name", "argv", "files"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_in_one_error_line(name, argv, files, tmp_path):
    if name.endswith(CUDA):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    done = run_case(REPO, tmp_path, argv, files)
    assert outcome(done) == "clean", f"exit {done.returncode}\n{done.stderr[-3000:]}"
    for rel, data in files.items():  # what the user had is untouched
        assert (tmp_path / rel).read_bytes() == data
    assert all(p.read_bytes() == b for p, b in before.items())


if __name__ == "__main__":
    import tempfile
    from collections import Counter

    repo = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else REPO
    counts: Counter[str] = Counter()
    for name, argv, files in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                kind = outcome(run_case(repo, Path(tmp), argv, files, timeout=60))
            except subprocess.TimeoutExpired:  # it went on to work with the bad value
                kind = "silent"
        counts[kind] += 1
        print(f"{kind:9s} {name}", flush=True)
    print(f"{len(CASES)} inputs: " + ", ".join(f"{n} {k}" for k, n in counts.most_common()))
