"""`nox -s speed`'s table (reports/speed.py), end to end on a tiny real Llama: every measurement
is there, positive and consistent, and bad options end in one line, not a traceback."""

import json
import subprocess
import sys

import pytest
from test_train import make_tiny

from reports import speed


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, default_model_dir):
    return make_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama", default_model_dir)


def test_speed_table_measures_every_part(tiny_dir, tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert speed.main(["--target", str(tiny_dir), "--dtype", "float32", "--threads", "1", "--reps", "2",
                       "--steps", "3", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [int(n) for n in doc["verify_s"]] == list(speed.VERIFY_TOKENS)
    assert all(s > 0 for s in doc["verify_s"].values())
    # The weights are what the model holds, the tied embedding counted once: per layer q, o 64x64,
    # k, v 64x32 (2 KV heads of 16), the MLP 3 x 64x128, two norms; the final norm.
    layer = 64 * (64 + 32 + 32 + 64) + 3 * 64 * 128 + 2 * 64
    assert doc["weight_bytes"] == 4 * (49152 * 64 + 4 * layer + 64)
    assert doc["weight_read_s"] > 0 and doc["ar_step_s"] > 0 and 0 <= doc["ar_bookkeeping_share"] < 1
    assert [m["draft"] for m in doc["methods"]] == ["eagle2", "eagle3", "scylla-1", "scylla-3"]
    for m in doc["methods"]:
        assert m["level_1_s"] > 0 and m["level_topk_s"] > 0 and m["step_s"] > 0
        assert set(m["phase_s"]) == {"draft", "tree", "verify", "accept", "commit"}
        assert m["phase_s"]["draft"] > 0 and 0 < m["bookkeeping_share"] < 1
    table = capsys.readouterr().out
    assert "weight read" in table and "verify(n)/AR" in table and "scylla-3" in table


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "--threads: a number of threads >= 1"),
    (["--reps", "x"], "--reps: a whole number >= 1"),
    (["--target", "/no/such/model"], "error: cannot load target"),
])
def test_bad_options_end_in_one_line(args, message):
    done = subprocess.run([sys.executable, "-m", "reports.speed", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode in (1, 2) and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
