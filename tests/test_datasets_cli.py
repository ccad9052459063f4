"""`scylla datasets list/show` through the real CLI entry point."""

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from harness.cli import cli


def run_scylla(*args: str) -> subprocess.CompletedProcess:
    """The console entry point, so user errors come out as `error: ...` and exit 1."""
    return subprocess.run([sys.executable, "-c", "from harness.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=300)


def test_list_json_with_data_dir(shared_eval_dir):
    result = CliRunner().invoke(cli, ["datasets", "list", "--data-dir", str(shared_eval_dir), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == ["mt_bench", "humaneval", "gsm8k", "alpaca", "cnn_dm", "natural_questions"]
    assert all(r["n_records"] == 80 and r["source"] == "eagle-dir" and len(r["checksum"]) == 64 for r in rows)
    assert rows[4]["location"].endswith("sum/question.jsonl")


def test_list_table(shared_eval_dir):
    result = CliRunner().invoke(cli, ["datasets", "list", "--data-dir", str(shared_eval_dir)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["dataset", "records", "source", "sha256"]
    assert lines[1].split()[:3] == ["mt_bench", "80", "eagle-dir"]
    assert len(lines) == 7


def test_show_formats_both_mt_bench_turns_with_the_target_template(shared_eval_dir, default_model_dir):
    result = CliRunner().invoke(cli, ["datasets", "show", "mt_bench", "-n", "1", "--data-dir", str(shared_eval_dir)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("mt_bench: 80 records from eagle-dir")
    assert "chat template: tokenizer's own, hash " in out
    assert "--- 81 [writing] turn 1/2, 53 tokens" in out
    assert "<|im_start|>user\nCompose an engaging travel blog post about a recent trip to Hawaii" in out
    assert "<|im_start|>assistant\n<the model's own answer to turn 1><|im_end|>\n<|im_start|>user\nRewrite" in out


def test_show_with_system_prompt_changes_the_hash(shared_eval_dir, default_model_dir):
    base = CliRunner().invoke(cli, ["datasets", "show", "gsm8k", "-n", "2", "--data-dir", str(shared_eval_dir)])
    sys_ = CliRunner().invoke(cli, ["datasets", "show", "gsm8k", "-n", "2", "--data-dir", str(shared_eval_dir),
                                    "--system-prompt", "Think step by step."])
    assert base.exit_code == sys_.exit_code == 0
    assert base.output.count("--- ") == 2
    assert "<|im_start|>system\nThink step by step.<|im_end|>" in sys_.output
    hash_line = [line for line in base.output.splitlines() if "hash" in line]
    assert hash_line != [line for line in sys_.output.splitlines() if "hash" in line]


def test_errors_are_one_line_with_exit_1(tmp_path):
    unknown = run_scylla("datasets", "show", "squad")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == ("error: unknown dataset 'squad'; known datasets: mt_bench, humaneval, "
                                      "gsm8k, alpaca, cnn_dm, natural_questions")
    missing = run_scylla("datasets", "list", "--data-dir", str(tmp_path / "nope"))
    assert missing.returncode == 1 and missing.stderr.strip() == f"error: --data-dir {tmp_path / 'nope'} is not a directory"
    bad_target = run_scylla("datasets", "show", "gsm8k", "--target", str(tmp_path / "model"))
    assert bad_target.returncode == 1 and "not 'default' and not a model or tokenizer folder" in bad_target.stderr


def test_list_shows_every_dataset_even_when_some_are_missing(tmp_path, shared_eval_dir):
    partial = tmp_path / "eagle"
    for name in ("mt_bench", "gsm8k"):
        (partial / name).mkdir(parents=True)
        (partial / name / "question.jsonl").write_bytes((shared_eval_dir / name / "question.jsonl").read_bytes())
    env_home = tmp_path / "home"
    result = subprocess.run(
        [sys.executable, "-c", "from harness.cli import main; main()", "datasets", "list", "--data-dir", str(partial)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "SCYLLA_HOME": str(env_home), "SCYLLA_OFFLINE": "1"},
    )
    assert result.returncode == 1
    table = result.stdout.splitlines()
    assert [line.split()[:3] for line in table[1:]] == [
        ["mt_bench", "80", "eagle-dir"], ["gsm8k", "80", "eagle-dir"], ["humaneval", "-", "unavailable"],
        ["alpaca", "-", "unavailable"], ["cnn_dm", "-", "unavailable"], ["natural_questions", "-", "unavailable"]]
    # The folder the user named lacks them: say so, rather than quietly reading another source.
    assert result.stderr.startswith("error: 4 of 6 datasets unavailable; dataset 'humaneval': the data folder")
    assert "humaneval/question.jsonl" in result.stderr and "leave --data-dir" in result.stderr
