"""`--lookup-tokens METHOD=M` in a sweep: a method's trees get the prompt-lookup chain grafted
under their root; the same draft under a second method name runs without it beside them.
A sweep running both, with the trees priced for each, is in test_sweep_auto.py."""

import pytest

from harness.cells import plan
from harness.spec import build_spec
from workloads.errors import ScyllaError

FLAGS = {"methods": "ar,scylla,scylla_copy", "draft": ("scylla=random:scylla", "scylla_copy=random:scylla"),
         "datasets": "humaneval", "batch_sizes": "1", "top_k": "2", "depths": "2", "total_tokens": "4",
         "prompts": "1", "max_new_tokens": "16", "warmup": "0", "dtype": "float32", "threads": "1"}


def test_only_the_named_method_grafts_and_other_cells_keep_their_ids():
    chained = plan(build_spec(None, {**FLAGS, "lookup_tokens": ("scylla_copy=4",)}))
    plain = plan(build_spec(None, FLAGS))
    grafts = {c.method: c.lookup_tokens for c in chained}
    assert grafts == {"ar": 0, "scylla": 0, "scylla_copy": 4}
    same = {c.method: c.cell_id for c in plain}
    assert {c.method: c.cell_id == same[c.method] for c in chained} == {"ar": True, "scylla": True, "scylla_copy": False}
    assert "+lookup 4" in next(c for c in chained if c.method == "scylla_copy").label()


@pytest.mark.parametrize(("given", "error"), [
    (("eagle2=4",), "lookup_tokens given for method 'eagle2', which is not in methods"),
    (("scylla_copy=0",), "scylla_copy"),
    (("scylla_copy",), "is not METHOD=TOKENS"),
    (("ar=2",), "'ar' is not the name of a method with a draft"),
])
def test_bad_lookup_tokens_are_refused(given, error):
    with pytest.raises(ScyllaError, match=error):
        build_spec(None, {**FLAGS, "lookup_tokens": given})


def test_a_chain_on_prompt_lookup_is_refused():
    with pytest.raises(ScyllaError, match="its draft is prompt lookup"):
        build_spec(None, {**FLAGS, "methods": "ar,lookup", "draft": (), "lookup_tokens": ("lookup=4",)})
