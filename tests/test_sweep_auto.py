"""`top_k auto` end to end on the embedded default target: the trees are priced with the draft's
replayed acceptance and the profile's latency curve, the sweep runs the choice, "no tree pays"
runs as AR, and a resume plans the same cells from the record."""

import json
import shutil

import pyarrow.parquet as pq
import pytest

from harness import auto_trees
from harness.runner import Progress, run_sweep
from harness.spec import build_spec
from reports import tables
from reports.html import build_report
from reports.load import load_results
from reports.regression import summary_table
from roofline import tree_costs
from scylla_impl import calibration
from scylla_impl.drafts import load_draft
from workloads.errors import ScyllaError


@pytest.fixture(autouse=True)
def small_replay(monkeypatch):
    monkeypatch.setattr(auto_trees, "HELD_OUT_PROMPTS", 2)
    monkeypatch.setattr(auto_trees, "REPLAY_NEW_TOKENS", 12)
    monkeypatch.setattr(auto_trees, "VERIFY_TOKENS", (1, 2, 4, 8))
    monkeypatch.setattr(calibration, "TOP_KS", (1, 3))
    monkeypatch.setattr(calibration, "MAX_DEPTH", 3)
    monkeypatch.setattr(tree_costs, "LEVEL_WIDTHS", (1, 3))
    monkeypatch.setattr(tree_costs, "PATH_WIDTHS", (2, 4))


def profile(folder, seconds, dtype="float32", prefix_tokens=200):
    """A profile folder whose verify curve is `seconds(b, n)` on a grid up to 16 tokens per row,
    timed over `prefix_tokens` cached ones."""
    points = [{"batch_size": b, "tokens": n, "seconds": seconds(b, n)} for b in (1, 2) for n in (1, 2, 4, 8, 16)]
    folder.mkdir()
    (folder / "profile.json").write_text(json.dumps({
        "profile_id": f"test-{folder.name}", "device": {"name": "cpu"}, "knee_tokens": 4,
        "knee": {"target": {"dtype": dtype}, "prefix_tokens": prefix_tokens, "points": points}}))
    return folder


class Notes(Progress):
    def __init__(self):
        self.lines = []

    def note(self, line):
        self.lines.append(line)


def spec_for(prof, **over):
    keys = {"methods": "ar,scylla", "draft": ("scylla=oracle",), "datasets": "mt_bench", "batch_sizes": "1",
            "top_k": "auto", "prompts": "2", "max_new_tokens": "8", "warmup": "0", "dtype": "float32",
            "threads": "1", "turns": "first", "profile": str(prof)}
    return build_spec(None, {**keys, **over})


def test_auto_runs_the_priced_tree_and_resumes_from_the_record(tmp_path, default_model_dir):
    # A huge target (5 s a verify): drafting is cheap beside it. The profile timed it over 40
    # cached tokens: a short Natural Questions prompt is priced there, a GSM8K problem
    # (about 110 tokens, past 2x) over its own length, with the verify curve timed now.
    spec = spec_for(profile(tmp_path / "flat", lambda b, n: 5.0, prefix_tokens=40),
                    datasets="natural_questions,gsm8k")
    notes = Notes()
    run_sweep(spec, tmp_path / "out", progress=notes)
    record = json.loads((tmp_path / "out" / "auto_trees.json").read_text())
    priced = record["drafts"]["oracle"]["datasets"]
    choice = priced["natural_questions"]["batch_sizes"]["1"]["choice"]
    assert choice["total_tokens"] > 1 and choice["accepted"] > 0
    assert all(priced[d]["acceptance"]["positions"] > 0 for d in ("natural_questions", "gsm8k"))
    assert any("replaying draft oracle" in line for line in notes.lines)
    cached = {ds: per["1"] for ds, per in record["contexts"]["cached_tokens"].items()}
    assert cached["natural_questions"] == 40 and cached["gsm8k"] > 80
    assert any(f"gsm8k at batch 1 runs over about {cached['gsm8k']} cached tokens" in line for line in notes.lines)
    timed = record["contexts"]["timed_verify_curves"][str(cached["gsm8k"])]
    assert 0 < max(p["seconds"] for p in timed) < 5.0  # this machine's milliseconds, not the profile's 5 s
    assert priced["gsm8k"]["batch_sizes"]["1"]["ar"]["tokens_per_s"] > 10 * choice["tokens_per_s"]
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    auto = {r["dataset"]: r for r in rows if r["top_k_setting"] == "auto"}
    assert sorted(auto) == ["gsm8k", "natural_questions"] and all(r["status"] == "ok" for r in auto.values())
    for dataset, row in auto.items():
        chosen = priced[dataset]["batch_sizes"]["1"]["choice"]
        assert (row["top_k"], row["depth"], row["total_tokens"]) == (
            chosen["top_k"], chosen["depth"], chosen["total_tokens"])
        assert row["lossless"] is True
    # The report puts each auto cell beside its prediction.
    res = load_results([tmp_path / "out"])
    pred = tables.auto_prediction_table(res.ok, res.predictions).set_index("dataset")
    assert sorted(pred.index) == ["gsm8k", "natural_questions"]
    assert pred.loc["natural_questions", "predicted_speedup"] == pytest.approx(
        choice["tokens_per_s"] / priced["natural_questions"]["batch_sizes"]["1"]["ar"]["tokens_per_s"])
    assert (pred["occupancy"] == 1.0).all() and (pred["predicted_occupancy"] == 1.0).all()  # one row: every slot
    # The step beside its price: the profile's planted 5 s verify, and GSM8K's timed now.
    assert pred.loc["natural_questions", "predicted_step_s"] == choice["step_s"] > 5
    assert 0 < pred.loc["gsm8k", "predicted_step_s"] < 5
    assert (pred["step_s"] == [auto[d]["step_time_median_s"] for d in pred.index]).all()
    # The spread of runs of the sweep's 2 prompts: the oracle accepts alike on every prompt.
    spread = priced["natural_questions"]["batch_sizes"]["1"]["spread"]
    assert spread["rows"] == 2 and spread["quantiles"] == [0.1, 0.5, 0.9]
    low, high = pred.loc["natural_questions", ["predicted_speedup_low", "predicted_speedup_high"]]
    assert (low, high) == (spread["speedup"][0], spread["speedup"][-1])
    said = (f"natural_questions b=1: k={choice['top_k']} d={choice['depth']} n={choice['total_tokens']} "
            f"({pred.loc['natural_questions', 'predicted_speedup']:.2f}x, {low:.2f}-{high:.2f})")
    assert any(line.startswith("auto trees for oracle: ") and said in line for line in notes.lines), notes.lines
    assert low == pytest.approx(pred.loc["natural_questions", "predicted_speedup"], rel=0.05) == high
    page = build_report(res, [])
    assert 'data-table="auto-predictions"' in page and "occupancy predicted" in page and "10-90% range" in page
    assert "step ms predicted" in page
    # A damaged record costs the report that table, said so, not the report.
    (tmp_path / "damaged").mkdir()
    shutil.copy(tmp_path / "out" / "results.parquet", tmp_path / "damaged")
    (tmp_path / "damaged" / "auto_trees.json").write_text('{"drafts": {"oracle": {"datasets": 3}}}')
    damaged = load_results([tmp_path / "damaged"])
    assert damaged.predictions.empty and any("auto's predictions" in n for n in damaged.notes)
    assert 'data-table="auto-predictions"' not in build_report(damaged, [])

    again = Notes()
    report = run_sweep(spec, tmp_path / "out", resume=True, progress=again)
    assert report.ran == 0 and report.skipped == 4 and not again.lines  # planned from the record, nothing re-measured
    # A resume from a damaged record is one line saying what to do, not a traceback.
    shutil.copytree(tmp_path / "out", tmp_path / "cut")
    cut = json.loads((tmp_path / "cut" / "auto_trees.json").read_text())
    cut["drafts"]["oracle"]["datasets"]["gsm8k"]["batch_sizes"]["1"]["spread"] = {"rows": 2}
    (tmp_path / "cut" / "auto_trees.json").write_text(json.dumps(cut))
    with pytest.raises(ScyllaError, match="auto_trees.json: unreadable .*delete it to price the trees again"):
        run_sweep(spec, tmp_path / "cut", resume=True)

    # A record written before trees were priced per dataset still plans its sweep's cells.
    for per in record["drafts"].values():
        per.update(per.pop("datasets")["natural_questions"])
    tree = auto_trees.AutoTrees(record)(1, "oracle", "gsm8k")
    assert (tree.top_k, tree.depth, tree.total_tokens) == (choice["top_k"], choice["depth"], choice["total_tokens"])
    other = spec_for(tmp_path / "flat", batch_sizes="1,2", prompts="4",
                     datasets="natural_questions,gsm8k")
    with pytest.raises(ScyllaError, match="made for another sweep"):
        run_sweep(other, tmp_path / "out", resume=True)
    # More new tokens lengthen every context the trees were priced at.
    longer = spec_for(tmp_path / "flat", max_new_tokens="64", datasets="natural_questions,gsm8k")
    with pytest.raises(ScyllaError, match="max new tokens differ"):
        run_sweep(longer, tmp_path / "out", resume=True)
    # A record keyed before max_new_tokens was part of the key still plans its sweep.
    old = json.loads((tmp_path / "out" / "auto_trees.json").read_text())
    del old["key"]["max_new_tokens"]
    (tmp_path / "out" / "auto_trees.json").write_text(json.dumps(old))
    assert run_sweep(spec, tmp_path / "out", resume=True, progress=Notes()).ran == 0


def test_auto_prices_a_lookup_chain_with_the_tree_it_is_grafted_under(tmp_path, default_model_dir):
    # One random draft under two names, the second with a 4-token chain: each is priced with its
    # own replay (the chain's copies counted), and each cell runs its own choice.
    flat = profile(tmp_path / "flat", lambda b, n: 5.0)
    spec = spec_for(flat, methods="ar,scylla,scylla_copy", draft=("scylla=random:scylla", "scylla_copy=random:scylla"),
                    lookup_tokens=("scylla_copy=4",), datasets="humaneval", max_new_tokens="16")
    notes = Notes()
    run_sweep(spec, tmp_path / "out", progress=notes)
    record = json.loads((tmp_path / "out" / "auto_trees.json").read_text())
    assert sorted(record["drafts"]) == ["random:scylla", "random:scylla +lookup 4"]
    assert any("replaying draft random:scylla with a 4-token lookup chain" in line for line in notes.lines)
    plain, chained = (record["drafts"][u]["datasets"]["humaneval"] for u in ("random:scylla", "random:scylla +lookup 4"))
    assert chained["acceptance"]["lookup_tokens"] == 4 and plain["acceptance"]["lookup_tokens"] == 0
    means = lambda priced: [a for row in priced["acceptance"]["mean_accepted"].values() for a in row]  # noqa: E731
    assert max(means(chained)) > max(means(plain))  # code repeats itself: the chain copies it
    rows = {r["method"]: r for r in pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()}
    for method, priced in (("scylla", plain), ("scylla_copy", chained)):
        chosen = priced["batch_sizes"]["1"]["choice"]
        assert chosen["lookup_tokens"] == (4 if method == "scylla_copy" else 0)
        row = rows[method]
        assert (row["top_k"], row["depth"], row["total_tokens"], row["lookup_tokens"]) == (
            chosen["top_k"], chosen["depth"], chosen["total_tokens"], chosen["lookup_tokens"])
        assert row["status"] == "ok" and row["lossless"] is True
    # A random draft's n - 1 nodes a step; the chain adds up to 4 where the code repeats itself.
    plain_row, chained_row = rows["scylla"], rows["scylla_copy"]
    assert plain_row["drafted_nodes"] == (plain_row["total_tokens"] - 1) * plain_row["verify_steps"]
    nodes, steps = chained_row["total_tokens"] - 1, chained_row["verify_steps"]
    assert nodes * steps < chained_row["drafted_nodes"] <= (nodes + 4) * steps
    assert chained_row["tau"] > plain_row["tau"]
    assert run_sweep(spec, tmp_path / "out", resume=True, progress=Notes()).ran == 0
    # The report names the second name by the draft it ran and the chain under its trees.
    res = load_results([tmp_path / "out"])
    label = tables.method_labeller(res.cells)
    named = f"Scylla-{plain_row['draft_layers']}" if plain_row["draft_layers"] != 3 else "Scylla"
    assert (label("scylla"), label("scylla_copy")) == ("Scylla", f"{named} +lookup 4")
    assert f">{named} +lookup 4</td>" in build_report(res, []).split('data-table="cells"')[1]
    assert any(line.startswith(f"{named} +lookup 4 ") for line in summary_table(res.cells).splitlines())


def test_auto_runs_ar_when_no_tree_pays(tmp_path, default_model_dir):
    # Compute-bound from the first token: every verified token costs a full step.
    spec = spec_for(profile(tmp_path / "steep", lambda b, n: 0.02 * b * n))
    run_sweep(spec, tmp_path / "out")
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    auto = next(r for r in rows if r["top_k_setting"] == "auto")
    ar = next(r for r in rows if r["method"] == "ar")
    assert (auto["top_k"], auto["depth"], auto["total_tokens"]) == (0, 0, 1)
    assert auto["status"] == "ok" and auto["tau"] == 1.0 and auto["lossless"] is True
    assert auto["emitted_tokens"] == ar["emitted_tokens"]
    assert auto["paired_ar_tokens_per_s"] is None and auto["ar_tokens_per_s"] == ar["tokens_per_s"]

    # Paired, the AR it runs is also decoded alongside, and its ratio divides by that. The trees
    # priced for the same sweep are planned from its record, not priced again.
    (tmp_path / "paired").mkdir()
    shutil.copy(tmp_path / "out" / "auto_trees.json", tmp_path / "paired")
    run_sweep(spec_for(tmp_path / "steep", paired_ar="true"), tmp_path / "paired")
    auto = next(r for r in pq.read_table(tmp_path / "paired" / "results.parquet").to_pylist()
                if r["top_k_setting"] == "auto")
    assert auto["total_tokens"] == 1 and auto["paired_ar_tokens_per_s"] > 0
    assert auto["speedup_vs_ar"] == pytest.approx(auto["tokens_per_s"] / auto["paired_ar_tokens_per_s"])


def test_auto_refuses_a_profile_of_another_dtype_or_without_a_curve(tmp_path, default_model_dir):
    spec = spec_for(profile(tmp_path / "bf16", lambda b, n: 5.0, dtype="bfloat16"))
    with pytest.raises(ScyllaError, match="timed the target in bfloat16, this sweep runs it in float32"):
        run_sweep(spec, tmp_path / "out")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "profile.json").write_text(json.dumps({"knee_tokens": 4, "knee": {"fit": {}}}))
    with pytest.raises(ScyllaError, match="no verify latency curve"):
        run_sweep(spec_for(tmp_path / "old"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_replayed_acceptance_is_kept_where_the_draft_can_be_found_again(tmp_path, monkeypatch):
    """A checkpoint keeps its tables in its folder, prompt lookup (a function of the target alone)
    under SCYLLA_HOME; random weights and the oracle keep none."""
    monkeypatch.setenv("SCYLLA_HOME", str(tmp_path / "home"))
    folder = tmp_path / "draft"
    folder.mkdir()
    assert auto_trees.calibration_file(str(folder)) is None  # not a checkpoint yet
    (folder / "config.json").write_text("{}")
    assert auto_trees.calibration_file(str(folder)) == folder / "calibration.json"
    assert auto_trees.calibration_file("lookup") == tmp_path / "home" / "calibration" / "lookup.json"
    assert auto_trees.calibration_file("random:eagle2") is None
    assert auto_trees.calibration_file("oracle") is None


def test_a_batch_is_priced_at_its_longest_row_expected():
    # Two rows of [100, 300]: both short a quarter of the time.
    assert auto_trees.expected_longest([100, 300], 1) == pytest.approx(200)
    assert auto_trees.expected_longest([100, 300], 2) == pytest.approx(0.25 * 100 + 0.75 * 300)
    assert auto_trees.expected_longest([730, 1974, 770, 2104], 4) > 1900  # CNN/DM's first four articles


def test_held_out_prompts_are_of_the_categories_the_sweep_measures():
    mt_bench = [c for c in ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
                for _ in range(10)]  # MT-bench's order: ten of each category
    pick = auto_trees.held_out_indices
    assert pick(mt_bench, 4, 8) == [4, 5, 6, 7, 8, 9, 78, 79]  # the six writing prompts left, then the last
    assert pick(mt_bench, 12, 8) == list(range(12, 20))  # 10:2 writing to roleplay; writing is spent
    assert pick(mt_bench, 0, 8) == list(range(9, 80, 10))  # none measured (`generate`): the last of each
    assert pick(["qa"] * 80, 4, 8) == pick(["qa"] * 80, 0, 8) == list(range(72, 80))  # one category: the last
    assert pick(mt_bench, 76, 8) == [76, 77, 78, 79] and pick(mt_bench, 80, 8) == pick([], 0, 8) == []
    # Proportions by largest remainder, ties to the category seen first.
    mixed = ["a"] * 6 + ["b"] * 3 + ["c"] * 1 + ["a", "b", "c"] * 10
    assert pick(mixed, 10, 5) == [31, 34, 35, 37, 38]  # 6:3:1 of 5 seats is 3, 1.5, 0.5 -> a 3, b 2, c 0
    for categories, skip, count in [(mt_bench, 4, 8), (mixed, 3, 12), (["x", "y"] * 7, 5, 8)]:
        picked = pick(categories, skip, count)
        assert len(set(picked)) == len(picked) == min(count, len(categories) - skip) and min(picked) >= skip


def test_kept_tables_of_an_older_format_are_dropped_when_new_ones_are_written(tmp_path, monkeypatch, target_fp32):
    # Prompt lookup keeps its tables under SCYLLA_HOME. A replay rewrites the file: its own table
    # added, another of this format kept, those of older formats (never read again) gone.
    monkeypatch.setenv("SCYLLA_HOME", str(tmp_path / "home"))
    file = auto_trees.calibration_file("lookup")
    file.parent.mkdir(parents=True)
    other = f"w/t/float32/other-prompts/12/1,3/3/{auto_trees.TABLE_FORMAT}"
    file.write_text(json.dumps({"w/t/float32/d/64/1,3/3/per-step": {}, "w/t/float32/d/64/1,3/3": {}, other: {}}))
    ids = target_fp32.tokenizer("def add(a, b):\n    return a + b\n\ndef sub(a, b):\n")["input_ids"]
    tables = auto_trees._acceptance(target_fp32, load_draft("lookup", target_fp32), "lookup", "float32",
                                    {"humaneval": [ids]}, echo=lambda line: None)
    kept = json.loads(file.read_text())
    (new,) = set(kept) - {other}
    assert other in kept and len(kept) == 2 and new.split("/")[7] == auto_trees.TABLE_FORMAT
    assert calibration.AcceptanceTable.from_json(kept[new]).positions == tables["humaneval"].positions > 0
