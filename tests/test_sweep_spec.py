"""Sweep spec parsing, validation and cell planning (no model is loaded here)."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cells import PLANNED, PRUNED, cell_id, plan
from harness.spec import KEYS, SweepSpec, build_spec, spec_from_dict
from scylla_impl.tree_shape import pool_size
from workloads.errors import ScyllaError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(text)
    return p


BASIC = """
target: default
methods: [ar, scylla]
draft: {scylla: random:scylla}
datasets: [mt_bench, gsm8k]
batch_sizes: [1, 4]
top_k: [4, 10]
depths: 5
total_tokens: 16
temperatures: [0]
prompts: 4
max_new_tokens: 16
"""


def test_yaml_parses_into_typed_spec(tmp_path):
    spec = build_spec(write(tmp_path, BASIC))
    assert spec.methods == ("ar", "scylla")
    assert spec.draft == {"scylla": ("random:scylla",)}
    assert spec.batch_sizes == (1, 4)
    assert spec.top_k == (4, 10)
    assert spec.depths == (5,)
    assert spec.temperatures == (0.0,)
    assert spec.prompts == 4


def test_cli_style_values_override_yaml(tmp_path):
    spec = build_spec(write(tmp_path, BASIC), {"batch_sizes": "2,8", "top_k": "4,auto", "profile": str(tmp_path),
                                               "draft": ("scylla=oracle",)})
    assert spec.batch_sizes == (2, 8)
    assert spec.top_k == (4, "auto")
    assert spec.draft == {"scylla": ("oracle",)}
    assert spec.datasets == ("mt_bench", "gsm8k")  # untouched keys keep the file's values


def test_flags_alone_make_a_spec():
    spec = build_spec(None, {"methods": "ar,scylla", "draft": ("scylla=random:scylla",), "datasets": "gsm8k,sum",
                             "batch_sizes": "1", "temperatures": "0,0.7"})
    assert spec.datasets == ("gsm8k", "cnn_dm")  # EAGLE's folder names are understood
    assert spec.temperatures == (0.0, 0.7)


def test_methods_default_to_ar_plus_drafts():
    spec = build_spec(None, {"draft": ("eagle2=random:eagle2", "scylla=random:scylla")})
    assert spec.methods == ("ar", "eagle2", "scylla")


def test_several_drafts_per_method(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text("{}")
    spec = build_spec(write(tmp_path, "draft:\n  scylla: [random:scylla, ck]\n"))
    assert spec.draft["scylla"] == ("random:scylla", str(ck.resolve()))  # relative to the YAML's folder


def test_every_key_is_a_flag_and_round_trips():
    from harness.commands.sweep import sweep

    options = {o for p in sweep.params for o in getattr(p, "opts", [])}
    for key in KEYS.values():
        assert key.option in options
    spec = build_spec(None, {"draft": ("scylla=random:scylla",), "top_k": "1,4"})
    assert spec_from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("datasets: [mt_bench, mmlu]\n", None, "unknown dataset 'mmlu'"),
        ("methods: [ar, scylla]\n", None, "method 'scylla' has no draft checkpoint: add --draft scylla="),
        ("methods: [ar, prompt_lookup]\n", None, "method 'prompt_lookup' is not one of ar, eagle2, eagle3, scylla, "
                                                "lookup (did you mean 'lookup'?); a method named by you runs the draft "
                                                "given as --draft prompt_lookup=PATH"),
        ("batch_sizes: [1, -4]\n", None, "batch_sizes: -4 is not a positive integer"),
        ("batch_size: [1]\n", None, "unknown key 'batch_size' (did you mean 'batch_sizes'?)"),
        ("colour: blue\n", None, "unknown key 'colour'"),
        ("top_k: [4, wide]\n", None, "top_k: 'wide' is neither a positive integer nor 'auto'"),
        ("top_k: [auto]\n", None, "top_k 'auto' needs a device profile: run `scylla profile"),
        ("temperatures: [-0.5]\n", None, "temperatures: -0.5 is below 0"),
        ("total_tokens: 1\n", None, "total_tokens: 1 is too small"),
        ("dtype: int8\n", None, "dtype: 'int8' is not one of"),
        ("draft: {scylla: /nonexistent/ckpt}\n", None, "draft for scylla: no checkpoint folder at /nonexistent/ckpt"),
        ("draft: {scylla: random:medusa}\n", None, "unknown 'random:medusa'"),
        ("draft: {ar: oracle}\n", None, "the ar baseline takes no draft"),
        # a registry method's name says what runs: a report's EAGLE-2 is an EAGLE-2 draft
        ("draft: {eagle2: random:scylla}\n", None, "draft for eagle2: random:scylla is a draft of Scylla, not of "
                                                   "EAGLE-2: run it as method scylla, or under a name of your own "
                                                   "(--methods ar,mine --draft mine=random:scylla)"),
        ("methods: [ar, lookup]\ndraft: {lookup: random:eagle3}\n", None, "random:eagle3 is a draft of EAGLE-3"),
        ("draft: {scylla: lookup}\n", None, "draft for scylla: lookup is a draft of Prompt lookup"),
        ("methods: [ar]\ndraft: {scylla: oracle}\n", None, "draft given for method 'scylla', which is not in methods"),
        ("executor: slurm\n", None, "executor: 'slurm' is not one of local, ray"),
        ("workers: 2\n", None, "workers: only with executor ray"),
        ("ray_address: head:6379\n", None, "ray_address: only with executor ray"),
        ("executor: ray\nretries: -1\n", None, "retries: -1 is not an integer >= 0"),
        ("executor: ray\nray_address: head\n", None, "ray_address: 'head' is not HOST:PORT, ray://HOST:PORT or auto"),
        ("- just\n- a list\n", None, "expected a mapping of keys"),
        ("batch_sizes: [1\n", None, "not valid YAML at line"),
        ("", {"prompts": "0"}, "prompts: 0 is not a positive integer"),
        ("", {"draft": ("scylla",)}, "is not METHOD=DRAFT"),
        ("", {"batch_sizes": "1,,2"}, "empty item"),
    ],
)
def test_bad_specs_give_clear_errors(tmp_path, text, overrides, message):
    with pytest.raises(ScyllaError) as err:
        build_spec(write(tmp_path, text), overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_spec_file(tmp_path):
    with pytest.raises(ScyllaError, match="no such file"):
        build_spec(tmp_path / "nope.yaml")


def spec_for(**kw) -> SweepSpec:
    base = dict(methods=("ar", "scylla"), draft={"scylla": ("random:scylla",)}, datasets=("gsm8k",),
                batch_sizes=(1, 4), top_k=(4, 10), depths=(5,), total_tokens=(60,), prompts=4)
    base.update(kw)
    return SweepSpec(**base)


def test_plan_adds_one_ar_partner_per_group_first():
    cells = plan(spec_for(datasets=("gsm8k", "mt_bench"), temperatures=(0.0, 1.0)))
    ar = [c for c in cells if c.is_ar]
    assert len(ar) == 2 * 2 * 2  # dataset x temperature x batch
    spec_cells = [c for c in cells if not c.is_ar]
    assert len(spec_cells) == 2 * 2 * 2 * 2
    by_id = {c.cell_id: c for c in cells}
    for c in spec_cells:
        partner = by_id[c.ar_partner]
        assert partner.is_ar and partner.group == c.group
        assert cells.index(partner) < cells.index(c)
    assert all(c.top_k is None and c.depth is None for c in ar)


def test_plan_prunes_with_reasons():
    cells = plan(spec_for(batch_sizes=(1, 8), top_k=(1, 4), depths=(3,), total_tokens=(4, 60)))
    pruned = {(c.method, c.batch_size, c.top_k, c.total_tokens): c.reason for c in cells if c.status == PRUNED}
    # batch 8 > 4 prompts: all of its cells, the AR partner included
    assert "batch_size 8 is larger than prompts (4)" in pruned[("ar", 8, None, None)]
    # a chain (top_k 1) of depth 3 holds 3 draft tokens: total_tokens 60 cannot fit
    assert pruned[("scylla", 1, 1, 60)] == "total_tokens 60 exceeds the tree: top_k 1 and depth 3 give at most 1 + 3 tokens"
    # top_k 4, depth 3: 4 + 2*16 = 36 < 59 draft tokens
    assert ("scylla", 1, 4, 60) in pruned
    assert all(c.status == PLANNED for c in cells if c.batch_size == 1 and c.total_tokens == 4)
    assert pool_size(4, 3) == 36


def test_fixed_top_k_without_total_tokens_gets_the_tied_size():
    """A user sweeping narrow trees gets them measured, not pruned for exceeding their pool."""
    from roofline.policy import total_tokens_for

    spec = build_spec(None, {"methods": "ar,scylla", "draft": ("scylla=random:scylla",), "datasets": "gsm8k",
                             "top_k": "1,2,4,10", "depths": "3,5", "prompts": 4})
    assert spec.total_tokens == ("tied",)
    cells = [c for c in plan(spec) if not c.is_ar]
    assert all(c.status == PLANNED for c in cells)
    assert {(c.top_k, c.depth): c.total_tokens for c in cells} == {
        (k, d): total_tokens_for(k, d) for k in (1, 2, 4, 10) for d in (3, 5)}
    assert total_tokens_for(10, 5) == 60 and total_tokens_for(1, 3) == 4  # EAGLE-2's default; a chain
    # 'tied' beside explicit sizes: the tied size once, however often it is also given
    both = plan(spec_for(top_k=(4,), depths=(3,), total_tokens=("tied", 10, 6)))
    assert sorted(c.total_tokens for c in both if not c.is_ar and c.batch_size == 1) == [6, 10]


def test_auto_top_k_resolved_by_policy():
    from roofline.tree_policy import TreeChoice

    calls = []

    def policy(batch, draft, dataset, lookup_tokens):
        calls.append((batch, draft, dataset, lookup_tokens))
        if batch == 4:
            return TreeChoice(batch, 0, 0, 1, 0.0, 0.1, 40.0)  # no tree pays: the cell runs as AR
        return TreeChoice(batch, 8, 3, 48, 1.5, 0.1, 25.0) if dataset == "gsm8k" else TreeChoice(batch, 2, 1, 3, 0.5, 0.1, 25.0)

    cells = plan(spec_for(top_k=(4, "auto"), depths=(3, 5), datasets=("gsm8k", "cnn_dm"), profile="/p"), policy=policy)
    auto = [c for c in cells if c.top_k_setting == "auto"]
    # one auto cell per batch size and dataset, whatever the spec's depths: the policy chooses the tree
    assert [(c.dataset, c.batch_size, c.top_k, c.depth, c.total_tokens) for c in auto] == [
        ("gsm8k", 1, 8, 3, 48), ("gsm8k", 4, 0, 0, 1), ("cnn_dm", 1, 2, 1, 3), ("cnn_dm", 4, 0, 0, 1)]
    assert all(c.status == PLANNED for c in auto) and "AR (no tree pays)" in auto[1].label()
    assert sorted(set(calls)) == [(b, "random:scylla", d, 0) for b in (1, 4) for d in ("cnn_dm", "gsm8k")]
    fixed = [c for c in cells if c.top_k_setting == "4"]
    assert len({c.cell_id for c in fixed + auto}) == len(fixed) + len(auto)
    with pytest.raises(ScyllaError, match="needs the trees priced"):
        plan(spec_for(top_k=("auto",), profile="/p"))


def test_cell_ids_are_stable_and_sensitive():
    a = plan(spec_for())
    b = plan(spec_for())
    assert [c.cell_id for c in a] == [c.cell_id for c in b]
    assert len({c.cell_id for c in a}) == len(a)
    c = plan(spec_for(max_new_tokens=64))
    assert not {x.cell_id for x in a} & {x.cell_id for x in c}
    params = dict(target="default", method="ar", dataset="gsm8k", batch_size=1, temperature=0, top_p=1)
    assert cell_id(params) == cell_id({**params, "temperature": 0.0})
    assert len(cell_id(params)) == 16
    # Settings added later keep the ids made before them at their defaults, and change them otherwise.
    assert cell_id(params) == cell_id({**params, "compile": False, "long_prompts": "refuse"})
    assert cell_id(params) != cell_id({**params, "long_prompts": "truncate"})
    assert [x.cell_id for x in a] == [x.cell_id for x in plan(spec_for(long_prompts="refuse"))]
    assert not {x.cell_id for x in a} & {x.cell_id for x in plan(spec_for(long_prompts="truncate"))}


def test_dry_run_lists_cells_and_pruned(tmp_path):
    from harness.cli import cli

    res = CliRunner().invoke(cli, ["sweep", str(write(tmp_path, BASIC)), "--batch-sizes", "1,8", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "cells to run" in res.output
    assert "combinations pruned" in res.output
    assert "batch_size 8 is larger than prompts (4)" in res.output
    assert not (tmp_path / "out").exists()


def write_profile(folder: Path, knee: float | None) -> Path:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    doc = {"profile_id": "test-profile", "device": {"name": "cpu"}}
    if knee is not None:
        doc["knee_tokens"] = knee
    (folder / "profile.json").write_text(json.dumps(doc))
    return folder


def test_profile_without_knee_is_a_clear_error(tmp_path):
    prof = write_profile(tmp_path / "prof", knee=None)
    spec = build_spec(None, {"draft": ("scylla=random:scylla",), "datasets": "gsm8k", "top_k": "auto",
                             "profile": str(prof)})
    from harness.auto_trees import sweep_policy

    with pytest.raises(ScyllaError, match="no verify knee"):
        sweep_policy(spec, None)


def test_progress_bar_shows_tau_and_tokens_per_s_and_is_a_line_per_cell_without_tty(capsys):
    from harness.progress import BarProgress

    cell = plan(spec_for())[1]
    bar = BarProgress(enabled=True)
    bar.start(3, skipped=1)
    bar.cell_started(cell)
    bar.cell_done(cell, {"status": "ok", "tau": 2.345, "tokens_per_s": 17.25})
    bar.close()
    err = capsys.readouterr().err
    assert "tau=2.35" in err and "tok/s=17.2" in err and "1/3" in err and "1 done before" in err

    lines = BarProgress()  # stderr is captured here: not a terminal
    lines.start(3, 0)
    lines.cell_done(cell, {"status": "ok", "tau": 2.0, "tokens_per_s": 1.0})
    lines.close()
    err = capsys.readouterr().err
    assert err.startswith("[sweep] 1/3 cells, ") and err.endswith(f"ETA 0s: {cell.label()}: tau 2.00, 1.0 tok/s\n")
    assert "\r" not in err
