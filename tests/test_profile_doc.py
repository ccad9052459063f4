"""profile.json read through roofline/profile_doc.py: the typed fields hold what the writer wrote,
and what was not measured reads as None, never as a number."""

import json
from pathlib import Path

import pytest

from roofline.profile_doc import SCHEMA_VERSION, ICrit, ProfileRecord, read_profile_doc
from workloads.errors import ScyllaError

FIXTURES = Path(__file__).parent / "fixtures"


def test_fields_of_a_written_profile():
    gpu = read_profile_doc(FIXTURES / "report_profile_gpu")
    raw = json.loads((FIXTURES / "report_profile_gpu" / "profile.json").read_text())
    assert gpu.doc["schema_version"] == SCHEMA_VERSION and gpu.profile_id == raw["profile_id"]
    assert gpu.device_name == raw["device"]["name"]
    assert gpu.peak_bandwidth == raw["bandwidth_peak_bytes_per_s"]
    assert gpu.peak_bandwidth_kernel == raw["bandwidth_peak_kernel"] in gpu.bandwidth
    assert gpu.flops == raw["flops_per_s"] and gpu.spec_flops == raw["spec"]["flops_per_s"]
    assert gpu.spec_bandwidth == raw["spec"]["bandwidth_bytes_per_s"]
    assert (gpu.i_crit, gpu.i_crit_spec, gpu.i_crit_dtype) == (raw["i_crit"]["measured"], raw["i_crit"]["spec"], "bfloat16")
    assert gpu.knee_tokens == raw["knee_tokens"] and gpu.knee_fit["t0_s"] == raw["knee"]["fit"]["t0_s"]
    assert [r["batch_size"] for r in gpu.topk_policy] == [r["batch_size"] for r in raw["topk_policy"]]
    cpu = read_profile_doc(FIXTURES / "report_profile_cpu" / "profile.json")  # the file itself also works
    assert cpu.spec_bandwidth is None and cpu.spec_flops == {} and cpu.i_crit_spec is None


def test_what_was_not_measured_reads_as_none(tmp_path):
    (tmp_path / "profile.json").write_text(json.dumps({
        "bandwidth_peak_bytes_per_s": None, "flops_per_s": {"bfloat16": None, "float32": 1e11, "float16": "fast"},
        "i_crit": {"measured": float("nan")}, "knee_tokens": 0, "knee": None,
        "unmeasured": [{"what": "knee", "reason": "the target did not load"}]}))
    doc = read_profile_doc(tmp_path)
    assert doc.peak_bandwidth is None and doc.peak_bandwidth_kernel is None
    assert doc.flops == {"float32": 1e11} and doc.i_crit is None and doc.knee_tokens is None
    assert doc.knee_fit == {} and doc.knee_dtype is None and doc.topk_policy == []
    assert doc.why_unmeasured("knee") == "the target did not load"


@pytest.mark.parametrize("doc, words", [
    ({"schema_version": 7}, "schema_version 7"),
    ({"unmeasured": "none"}, '"unmeasured" is a string'),
    ({"topk_policy": [{"batch_size": "one"}]}, '"topk_policy" must be a list'),
])
def test_a_profile_this_code_cannot_read_is_refused(tmp_path, doc, words):
    (tmp_path / "profile.json").write_text(json.dumps(doc))
    with pytest.raises(ScyllaError, match=words):
        read_profile_doc(tmp_path)


def test_the_written_record_reads_back_through_the_typed_fields(tmp_path):
    record = ProfileRecord(created_utc="2026-12-03T00:00:00+00:00", options={"dtype": "float32"},
                           device={"name": "EPYC", "kind": "cpu"}, machine_load={})
    record.bandwidth_bytes_per_s = {"read": 4e10, "triad": 3e10}
    record.bandwidth_peak_bytes_per_s, record.bandwidth_peak_kernel = 4e10, "read"
    record.flops_per_s = {"float32": 2e11, "bfloat16": float("nan")}  # NaN: JSON has none, it becomes null
    record.i_crit = ICrit(dtype="float32", measured=5.0, spec=None, nvml_derived=None,
                          measured_per_dtype={"float32": 5.0}, spec_per_dtype={}, bandwidth_bytes_per_s=4e10)
    with pytest.raises(AttributeError):
        record.bandwith_peak_bytes_per_s = 1.0  # a misspelt field is an error, not a new key
    doc = record.to_json()
    (tmp_path / "profile.json").write_text(json.dumps(doc))
    read = read_profile_doc(tmp_path)
    assert read.doc["schema_version"] == SCHEMA_VERSION and read.profile_id == doc["profile_id"]
    assert (read.device_name, read.dtype, read.peak_bandwidth, read.peak_bandwidth_kernel) == ("EPYC", "float32", 4e10,
                                                                                               "read")
    assert read.flops == {"float32": 2e11} and doc["flops_per_s"]["bfloat16"] is None
    assert (read.i_crit, read.i_crit_dtype, read.knee_tokens, read.knee_fit) == (5.0, "float32", None, {})
    record.figures = ["roofline.png"]
    assert record.to_json()["profile_id"] != doc["profile_id"]  # the id names the content
