"""profile.json read through roofline/profile_doc.py: the typed fields hold what the writer wrote,
and what was not measured reads as None, never as a number."""

import json
from pathlib import Path

import pytest

from roofline.profile_doc import SCHEMA_VERSION, read_profile_doc
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
