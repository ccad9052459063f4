"""The acceptance replay counts exactly what speculative decoding accepts, position by position,
on the embedded default target in float32 with real MT-bench prompts, and feeds the draft
exactly the (token, feature) pairs decoding feeds it."""

import json

import numpy as np
import pytest
import torch

from scylla_impl.calibration import AcceptanceTable, ReplayedRow, replay, replay_groups, tokens_cap
from scylla_impl.decode import generate
from scylla_impl.decode_config import DecodeConfig
from scylla_impl.drafts import load_draft
from workloads.errors import ScyllaError

NEW_TOKENS = 32


@pytest.fixture(scope="module")
def prompts(mt_bench_prompts):
    return mt_bench_prompts[:2]


@pytest.mark.parametrize("spec,tree,chain", [("lookup", (3, 4, 12), 0), ("random:eagle2", (4, 3, 10), 0),
                                             ("oracle", (2, 5, 8), 0), ("random:eagle3", (1, 6, 7), 0),
                                             ("random:eagle2", (2, 2, 4), 5)])
def test_replay_accepts_what_decoding_accepts(target_fp32, prompts, spec, tree, chain):
    k, d, n = tree
    draft = load_draft(spec, target_fp32)
    seen = {}
    table = replay(target_fp32, draft, prompts, new_tokens=NEW_TOKENS, batch_size=2, top_ks=(k,), max_depth=d + 1,
                   lookup_tokens=chain,
                   on_position=lambda p, i, got: seen.__setitem__((p, i), int(got[(k, d)][n - 2])))
    assert table.positions == len(seen) > 0 and table.lookup_tokens == chain
    decoded = []  # accepted per decoding step, at the roots the replay priced
    for p, prompt in enumerate(prompts):
        stats = generate(target_fp32, [prompt], draft, DecodeConfig(top_k=k, depth=d, total_tokens=n,
                                                                    max_new_tokens=NEW_TOKENS,
                                                                    lookup_tokens=chain)).stats
        root = 0  # index in the continuation of the step's root token
        for accepted in stats.accepted[:, 0].tolist():
            if (p, root) in seen:
                assert seen[(p, root)] == accepted, (spec, p, root)
                decoded.append(accepted)
            root += accepted + 1
        # What each of the row's steps moves (1 + accepted) over a decode of T new tokens is what
        # that decode's steps moved, for any T the replay spans; a step landing past the span is
        # not known, so the longest decode may have one step more than the replay counts.
        for new_tokens in (2, 9, NEW_TOKENS - d):
            tokens, trees = table.decodes(new_tokens)
            moves = next(m for kk, dd, nn, m in trees if (kk, dd, nn) == (k, d, n))[p]
            short = generate(target_fp32, [prompt], draft, DecodeConfig(top_k=k, depth=d, total_tokens=n,
                                                                       max_new_tokens=new_tokens,
                                                                       lookup_tokens=chain))
            assert tokens[p] == len(short.token_ids[0]) - 1
            moved = np.bincount(1 + short.stats.accepted[:, 0], minlength=moves.size)
            if new_tokens == 9:
                np.testing.assert_array_equal(moves, moved, err_msg=f"{spec} prompt {p}")
            else:
                assert (moves <= moved).all() and moves.sum() >= moved.sum() - 1, (spec, p, new_tokens)
    assert len(decoded) >= 8
    # The table's mean is the decode's, per step: not the mean over every replayed position.
    assert table.mean_accepted(k, d, n) == pytest.approx(sum(decoded) / len(decoded))
    if chain:  # a random draft's tree accepts next to nothing: the copies are the chain's
        assert max(decoded) > d


class Spy:
    """A draft that records every pair `extend` is fed."""

    def __init__(self, draft):
        self.draft, self.pairs = draft, []

    def __getattr__(self, name):
        return getattr(self.draft, name)

    def start(self, prompts, capacity=256):
        self.pairs = []
        self.draft.start(prompts, capacity)

    def extend(self, tokens, features, counts):
        for r in range(tokens.shape[0]):
            for j in range(int(counts[r])):
                self.pairs.append((r, int(tokens[r, j]), features[r, j].clone()))
        return self.draft.extend(tokens, features, counts)


def test_replay_feeds_the_pairs_decoding_feeds(target_fp32, prompts):
    # A random draft accepts nothing, so decoding extends one pair per step, as the replay does.
    spy = Spy(load_draft("random:eagle2", target_fp32))
    prompt = prompts[0]
    replay(target_fp32, spy, [prompt], new_tokens=12, batch_size=1, top_ks=(2,), max_depth=3)
    replayed = spy.pairs
    generate(target_fp32, [prompt], spy, DecodeConfig(top_k=2, depth=3, total_tokens=4, max_new_tokens=12))
    decoded = spy.pairs
    assert len(replayed) >= len(prompt) + 5
    for (ra, ta, fa), (rb, tb, fb) in zip(replayed, decoded):
        assert (ra, ta) == (rb, tb)
        torch.testing.assert_close(fa, fb, rtol=1e-4, atol=1e-4)


def replayed_row(table: AcceptanceTable, span: int, decoded: int, stopped: bool, roots: list[int]) -> ReplayedRow:
    """A row whose tree (4, 3, N=10) steps from `roots`; every other tree steps from none."""
    stepped = {key: np.zeros((s.size, span), dtype=bool) for key, s in table.sums.items()}
    stepped[(4, 3)][8, roots] = True
    return ReplayedRow(decoded, stopped, stepped)


def test_acceptance_table_round_trips_pools_and_refuses_what_it_never_priced():
    table = AcceptanceTable((1, 4), 3, positions=3)
    table.sums[(4, 3)][:] = 1.0
    table.steps[(4, 3)][:] = 2.0
    table.rows = [replayed_row(table, 13, 20, False, [0, 2, 3, 7, 9, 12]), replayed_row(table, 5, 12, True, [0, 4])]
    back = AcceptanceTable.from_json(json.loads(json.dumps(table.to_json())))
    assert back.mean_accepted(4, 3, 10) == 0.5 and back.positions == 3
    for mine, theirs in zip(table.rows, back.rows):
        assert (mine.decoded, mine.stopped, mine.span) == (theirs.decoded, theirs.stopped, theirs.span)
        for key, bits in mine.stepped.items():
            np.testing.assert_array_equal(bits, theirs.stepped[key])
    # 9 new tokens: 8 after the prefill's. Row 0 steps from c_0, c_2, c_3 and c_7 before c_8,
    # moving 2, 1, 4 and 2; row 1 (EOS after 12 tokens) from c_0, moving 4.
    tokens, trees = back.decodes(9)
    moves = {(k, d, n): m for k, d, n, m in trees}
    assert tokens.tolist() == [8, 8]
    assert moves[(4, 3, 10)].tolist() == [[0, 1, 2, 0, 1], [0, 0, 0, 0, 1]]
    assert moves[(4, 3, 9)].tolist() == [[0, 1, 0, 0, 0]] * 2  # no step known: one position a step
    # 40: row 0 runs past its span, on all its known steps; row 1 ends at its EOS.
    tokens, trees = back.decodes(40)
    assert tokens.tolist() == [39, 12]
    assert next(m for k, d, n, m in trees if (k, d, n) == (4, 3, 10))[0].tolist() == [0, 1, 2, 1, 1]
    with pytest.raises(ScyllaError, match="no verify step"):
        back.decodes(1)
    other = AcceptanceTable((1, 4), 3, positions=5)
    other.sums[(4, 3)][:], other.steps[(4, 3)][:] = 5.0, 3.0
    other.rows = [replayed_row(other, 13, 20, False, [0, 1])]
    pooled = AcceptanceTable.pooled([back, other])  # per step over both: (1 + 5) / (2 + 3)
    assert pooled.mean_accepted(4, 3, 10) == pytest.approx(1.2) and pooled.positions == 8
    assert len(pooled.rows) == 3
    assert sorted(set((k, d) for k, d, _ in back.trees())) == [(k, d) for k in (1, 4) for d in (1, 2, 3)]
    assert tokens_cap(1, 3) == 4 and tokens_cap(10, 8) == 128
    with pytest.raises(KeyError):
        back.mean_accepted(4, 3, 500)
    with pytest.raises(ScyllaError, match="not an acceptance table"):
        AcceptanceTable.from_json({"top_ks": [1]})


def test_a_long_prompt_with_a_short_continuation_replays_as_it_would_alone(target_fp32, mt_bench_prompts):
    # Decoding stops each row at its own EOS, so the longest prompt can own the shortest
    # continuation while a short prompt runs on; the batch must price each row as if alone.
    from scylla_impl.calibration import _replay_batch

    long_prompt, short_prompt = max(mt_bench_prompts, key=len), min(mt_bench_prompts, key=len)
    assert len(long_prompt) > len(short_prompt) + 20
    continuations = [long_prompt[-9:], short_prompt[-6:] + long_prompt[-30:]]  # lookup finds these
    draft, depth = load_draft("lookup", target_fp32), 3

    def tables_of(rows):
        tables = [AcceptanceTable((2,), depth) for _ in rows]
        _replay_batch(target_fp32, draft, [[long_prompt, short_prompt][r] for r in rows],
                      [continuations[r] for r in rows], (), tables, depth, 0, None)
        return tables

    together, alone = tables_of([0, 1]), [tables_of([0])[0], tables_of([1])[0]]
    assert [t.positions for t in together] == [len(c) - depth for c in continuations] == [t.positions for t in alone]
    for row in (0, 1):
        for key, sums in together[row].sums.items():
            np.testing.assert_allclose(sums, alone[row].sums[key])
            np.testing.assert_allclose(together[row].steps[key], alone[row].steps[key])
            np.testing.assert_array_equal(together[row].rows[0].stepped[key], alone[row].rows[0].stepped[key])
    assert together[1].sums[(2, depth)].max() > 0  # the copied spans were found


def test_a_replay_by_groups_pools_to_the_replay_of_all_its_prompts(target_fp32, mt_bench_prompts):
    draft, prompts = load_draft("lookup", target_fp32), mt_bench_prompts[:3]
    settings = dict(new_tokens=16, batch_size=2, top_ks=(1, 3), max_depth=4)
    whole = replay(target_fp32, draft, prompts, **settings)
    groups = replay_groups(target_fp32, draft, {"a": prompts[:1], "b": prompts[1:]}, **settings)
    assert [groups[g].positions for g in "ab"] == [whole.positions - groups["b"].positions, groups["b"].positions]
    pooled = AcceptanceTable.pooled(list(groups.values()))
    for key in whole.sums:
        np.testing.assert_allclose(pooled.sums[key], whole.sums[key])
        np.testing.assert_allclose(pooled.steps[key], whole.steps[key])
        for mine, theirs in zip(pooled.rows, whole.rows, strict=True):
            np.testing.assert_array_equal(mine.stepped[key], theirs.stepped[key])
