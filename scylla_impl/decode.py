"""Batched decoding: the autoregressive baseline and speculative decoding, one loop.

Every step feeds each row's last emitted token (the root) plus, when a draft is given, its
draft tree to one target forward; verification keeps a path per row, the cache commits
it, and the row emits the accepted draft tokens plus the target's bonus token. With no
draft the tree is the root alone, so AR and speculative decoding share the target
adapter, the cache and this loop, and a speedup compares like with like. A row that
finishes (EOS or the token limit) leaves the batch at once, target and draft cache rows
included, so the rows still decoding never pay for it.
"""

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from scylla_impl.contracts import DraftModel, TargetModel
from scylla_impl.decode_config import DecodeConfig
from scylla_impl.ngrams import Ngrams
from scylla_impl.phase_timer import PhaseTimer
from scylla_impl.tree import Tree, build_tree, graft_chain
from scylla_impl.verify import next_token, verify
from workloads.errors import ScyllaError

PHASES = ("draft", "tree", "verify", "accept", "commit")


@dataclass
class DecodeStats:
    """Raw counters, one entry per verify step (and row). Ratios are derived by readers."""

    drafted: np.ndarray  # [steps, b] draft nodes scored
    accepted: np.ndarray  # [steps, b] draft tokens accepted (0..depth)
    emitted: np.ndarray  # [steps, b] tokens that count: accepted + bonus, cut at EOS / max_new_tokens
    active: np.ndarray  # [steps, b] row still decoding at this step
    phase_s: dict[str, np.ndarray]  # PHASES -> [steps] seconds
    step_s: np.ndarray  # [steps] seconds
    prefill_s: float
    decode_s: float  # wall time of the decode loop
    first_tokens: np.ndarray  # [b] 1 if prefill emitted a token that counts (not part of tau)

    @classmethod
    def from_steps(cls, counts: list["StepCounts"], b: int, step_s: list[float], phase_s: dict[str, np.ndarray],
                   prefill_s: float, decode_s: float) -> "DecodeStats":
        """The counters of a decode's steps over its `b` request rows (StepCounts: one entry per row)."""
        shape = (len(counts), b)

        def stacked(name: str, dtype) -> np.ndarray:
            return np.array([getattr(c, name) for c in counts], dtype=dtype).reshape(shape)

        return cls(drafted=stacked("drafted", np.int64), accepted=stacked("accepted", np.int64),
                   emitted=stacked("emitted", np.int64), active=stacked("active", bool), phase_s=phase_s,
                   step_s=np.array(step_s), prefill_s=prefill_s, decode_s=decode_s,
                   first_tokens=np.ones(b, dtype=np.int64))

    @property
    def steps(self) -> int:
        return int(self.step_s.shape[0])

    @property
    def tau(self) -> float:
        """Emitted tokens per verify step, over every active row-step."""
        steps = self.active.sum()
        return float(self.emitted.sum() / steps) if steps else 0.0


@dataclass
class GenerationResult:
    token_ids: list[list[int]]
    texts: list[str]
    stats: DecodeStats
    config: DecodeConfig = field(default_factory=DecodeConfig)
    # Greedy AR only, one entry per token of token_ids: its rivals there (`rivals`). The
    # lossless check reads them to tell a near-tie broken the other way by rounding (bf16)
    # from a real divergence (harness/metrics.py).
    rivals: list[list[list[int]]] | None = None

    @property
    def tokens_per_s(self) -> float:
        total = self.stats.emitted.sum()
        return float(total / self.stats.decode_s) if self.stats.decode_s > 0 else 0.0


def _synchronizer(device: torch.device):
    """Waits for `device`'s queued work: on cuda:N that GPU's, not the current one's. The loop
    waits only around prefill and after its last step; phase boundaries never wait (PhaseTimer)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


# Decoding never needs autograd: inference mode also skips the version counters and view
# tracking that no_grad keeps, about a microsecond per small operator, 5-6% of a step for the
# embedded target (an AR step 20.96 -> 19.67 ms, fp32, 2-core EPYC) and of a draft level for
# Scylla-3 (1.85 -> 1.76 ms at 10 rows), with the same bits. What prices a step's parts
# (roofline/tree_costs.py, roofline/knee.py, calibration's replay) times them the same way.
@torch.inference_mode()
def generate(target: TargetModel, prompts: list[list[int]], draft: DraftModel | None = None,
             config: DecodeConfig = DecodeConfig()) -> GenerationResult:
    """Decode a batch of token-id prompts; `draft=None` is the autoregressive baseline. The two
    objects' contracts: scylla_impl/contracts.py."""
    config.validate(speculative=draft is not None)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ScyllaError("every prompt needs at least one token")
    if draft is not None and config.top_k > draft.draft_vocab:
        raise ScyllaError(f"top_k {config.top_k} is larger than the draft's vocabulary ({draft.draft_vocab} tokens)")
    vocab = target.info.vocab_size
    if any(t < 0 or t >= vocab for p in prompts for t in p):
        raise ScyllaError(f"prompt token ids must lie in 0..{vocab - 1} (the target's vocabulary)")
    check_context(target, max(len(p) for p in prompts), config, draft is not None)
    device, b = target.device, len(prompts)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    layers = tuple(draft.feature_layers) if draft is not None else ()
    tree_tokens = config.total_tokens + config.lookup_tokens if draft is not None else 1
    capacity = max(len(p) for p in prompts) + config.max_new_tokens + tree_tokens + config.tree_depth + 8
    cache = target.new_cache(b, capacity)
    eos = target.eos_ids

    sync = _synchronizer(device)
    sync()
    t0 = time.perf_counter()
    out = target.prefill(cache, prompts, layers)
    roots = next_token(out.logits[:, 0], config.temperature, config.top_p, gen)  # logits at each row's last token
    ngrams = Ngrams(max_tokens=config.lookup_tokens) if config.lookup_tokens and draft is not None else None
    front = _first_frontier(draft, ngrams, prompts, out.layer_inputs if layers else out.hidden, roots, capacity)
    sync()
    prefill_s = time.perf_counter() - t0

    rows = Rows([[int(t)] for t in roots.tolist()], [t in eos or config.max_new_tokens <= 1 for t in roots.tolist()],
                list(range(b)))
    if draft is None and config.temperature == 0:
        rows.rivals = [[tied] for tied in rivals(out.logits[:, 0], roots, target.dtype)]
    front = Frontier(*_leave(target, draft, ngrams, cache, rows, front.roots, front.root_logprobs, front.root_out))
    counts: list[StepCounts] = []
    step_s: list[float] = []
    timer = PhaseTimer(device, PHASES)
    t_loop = time.perf_counter()
    while not all(rows.done):
        step_start = time.perf_counter()
        front, counted = step(target, draft, ngrams, cache, front, rows, config, layers, gen, timer)
        timer.end_step()
        counts.append(counted)
        step_s.append(time.perf_counter() - step_start)
    sync()
    stats = DecodeStats.from_steps(counts, b, step_s, timer.resolve(), prefill_s, time.perf_counter() - t_loop)
    texts = [target.tokenizer.decode(ids, skip_special_tokens=True) for ids in rows.outputs]
    return GenerationResult(rows.outputs, texts, stats, config, rows.rivals)


def _first_frontier(draft: DraftModel | None, ngrams: Ngrams | None, prompts: list[list[int]],
                    features: torch.Tensor | None, roots: torch.Tensor, capacity: int) -> "Frontier":
    """After the prefill: the draft reads each prompt beside the target's features and scores
    the first tree's roots, and prompt lookup indexes the prompts. Without a draft: the roots alone."""
    if draft is None:
        return Frontier(roots)
    draft.start(prompts, capacity)
    lengths = torch.tensor([len(p) for p in prompts], device=roots.device)  # [b]
    # Pair t is (token t+1, feature t): the prompt shifted by one, then the first new token.
    longest = int(lengths.max())
    pair_tokens = torch.tensor([p[1:] + [int(roots[r])] + [0] * (longest - len(p))
                                for r, p in enumerate(prompts)], device=roots.device)  # [b, longest]
    front = Frontier(roots, *draft.extend(pair_tokens, features, lengths))
    if ngrams is not None:
        ngrams.start(prompts)
        ngrams.extend(pair_tokens, lengths)
    return front


def check_context(target: TargetModel, longest_prompt: int, config: DecodeConfig, speculative: bool) -> None:
    """Refuse a decode that would run past the positions the target is built for: a model with
    learned positions (GPT-2, OPT) has no embedding there and fails mid-run, and a rotary one
    would be measured on text it was never trained to read. The last step scores its tree
    `depth` positions past the last token fed."""
    context = target.info.context
    need = longest_prompt + config.max_new_tokens + (config.tree_depth if speculative else 0)
    if context is not None and need > context:
        tree = f" + a depth-{config.tree_depth} tree" if speculative else ""
        raise ScyllaError(f"a prompt of {longest_prompt} tokens + {config.max_new_tokens} new tokens{tree} needs {need} "
                          f"positions; {target.info.name} takes {context}: shorten the prompt or lower max_new_tokens")


# A token's rivals: the other tokens whose logit lies within this many units in the last place
# (of the chosen logit, in the target's dtype) of the chosen one. Where a verify of a tree and a
# one-token AR step run through different kernels (GPUs, BLAS beyond the few-row kernel's rows,
# SDPA for soft-capped attention), a logit can come out an ulp or two apart in reduced
# precision, and between rivals that decides which one the argmax takes. Measured in bf16 on
# the embedded target with torch's kernels (README, "lossless"): all 122 speculative outputs
# that parted from AR on 48 cells did so by taking one of AR's rivals, while 11% of AR's tokens
# have any. On the CPU's few-row paths (skinny_linear.py, row_attention.py) AR and verify give
# the same bits, in fp32 and in bf16.
NEAR_TIE_ULPS = 2.0
MAX_RIVALS = 8  # exact ties among more tokens keep the first 8: the check then errs strict


def rivals(logits: torch.Tensor, chosen: torch.Tensor, dtype: torch.dtype) -> list[list[int]]:
    """logits [b, V] (float32 from a `dtype` model), chosen [b] -> per row, the other tokens
    within NEAR_TIE_ULPS of the chosen token's logit."""
    picked = logits.gather(1, chosen[:, None])  # [b, 1]
    ulp = torch.finfo(dtype).eps * torch.exp2(torch.floor(torch.log2(picked.abs().clamp_min(1.0))))  # [b, 1]
    close = (picked - logits <= NEAR_TIE_ULPS * ulp).scatter(1, chosen[:, None], False)  # [b, V]
    rows, tokens = close.nonzero(as_tuple=True)
    out: list[list[int]] = [[] for _ in range(logits.shape[0])]
    for r, t in zip(rows.tolist(), tokens.tolist()):
        if len(out[r]) < MAX_RIVALS:
            out[r].append(t)
    return out


@dataclass
class Rows:
    """Each row's tokens so far (the prefill's first one included), whether it has finished,
    and which rows are still in the batch: a row that finishes leaves it (`_leave`), so the
    step's batch position i is row `live[i]`."""

    outputs: list[list[int]]
    done: list[bool]
    live: list[int]
    rivals: list[list[list[int]]] | None = None  # greedy AR: per output token, see GenerationResult


@dataclass
class Frontier:
    """Where the rows stand between steps: each row's last emitted token, the root of its next
    tree, and with a draft, the draft's log-probs and output at that root (the tree grows from them)."""

    roots: torch.Tensor  # [b]
    root_logprobs: torch.Tensor | None = None  # [b, draft vocab]
    root_out: torch.Tensor | None = None  # [b, h]: the draft's hidden state at the root


@dataclass(frozen=True)
class StepCounts:
    """One step's raw counters per row; DecodeStats stacks them."""

    drafted: list[int]  # draft nodes scored
    accepted: list[int]  # draft tokens accepted
    emitted: list[int]  # tokens that count (accepted + bonus, cut at EOS or the limit)
    active: list[bool]  # row still decoding at this step


def step(target: TargetModel, draft: DraftModel | None, ngrams: Ngrams | None, cache, front: Frontier, rows: Rows,
         config: DecodeConfig, layers: tuple[int, ...], gen: torch.Generator,
         timer: PhaseTimer) -> tuple[Frontier, StepCounts]:
    """One verify step for every row: draft a tree from its root, score the whole tree with one
    target forward, accept the longest path the target agrees with plus its bonus token, commit
    that path to the cache, and feed it to the draft for the next tree. Without a draft the tree
    is the root alone: an AR step."""
    # Draft: the tree's levels, each one draft forward (build_tree marks "draft" and "tree" inside),
    # and the prompt-lookup chain grafted under its root.
    if draft is not None:
        timer("tree")
        tree = build_tree(draft, front.root_logprobs, front.root_out, front.roots, config.top_k, config.depth,
                          config.total_tokens, timer)
        if ngrams is not None:
            tree = graft_chain(tree, ngrams.proposals, config.lookup_tokens)
    else:
        tree = Tree.root_only(front.roots)
    # Verify: every row's tree in one forward over the cached prefix.
    timer("verify")
    scored = target.forward_tree(cache, tree.tokens, tree.depths, tree.mask, layers)
    # Accept: greedy or lossless rejection sampling down the tree.
    timer("accept")
    verdict = verify(tree, scored.logits, config.temperature, config.top_p, gen)
    # Commit: the accepted path stays in the cache, the rest of the tree is dropped.
    timer("commit")
    target.commit(cache, verdict.path, verdict.path_len)
    path_tokens = tree.tokens.gather(1, verdict.path)  # [b, depth+1], root first
    # Accepted draft tokens then the bonus: row r's first path_len[r] entries count.
    new_tokens = torch.cat([path_tokens[:, 1:], path_tokens[:, :1]], 1)  # [b, depth+1]
    new_tokens.scatter_(1, (verdict.path_len - 1)[:, None], verdict.bonus[:, None])
    counted = _emit(rows, new_tokens.tolist(), verdict.path_len.tolist(), verdict.accepted.tolist(),
                    tree.size - 1, target.eos_ids, config.max_new_tokens)
    if rows.rivals is not None:  # greedy AR: each row emitted one token, the bonus
        for r, tied in zip(rows.live, rivals(scored.logits[:, 0], verdict.bonus, target.dtype)):
            rows.rivals[r].append(tied)
    if draft is None:
        return Frontier(*_leave(target, draft, ngrams, cache, rows, verdict.bonus)), counted
    feats = scored.layer_inputs if layers else scored.hidden  # [b, n, h or 3h]
    path_feats = feats.gather(1, verdict.path[:, :, None].expand(-1, -1, feats.shape[-1]))  # [b, depth+1, .]
    roots, new_tokens, path_feats, kept = _leave(target, draft, ngrams, cache, rows, verdict.bonus, new_tokens,
                                                 path_feats, verdict.path_len)
    if not rows.live:
        return Frontier(roots), counted
    # The draft reads the accepted path (pair t: token t+1 with the target's feature at t).
    timer("draft")
    root_logprobs, root_out = draft.extend(new_tokens, path_feats, kept)
    if ngrams is not None:
        ngrams.extend(new_tokens, kept)
    return Frontier(roots, root_logprobs, root_out), counted


def _leave(target: TargetModel, draft: DraftModel | None, ngrams: Ngrams | None, cache, rows: Rows,
           *per_row: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Rows that have finished leave the batch: their target and draft cache rows go, so no
    later forward spends matmul or attention work on them, and the others attend only up to
    the longest row still decoding. Returns the staying rows of each `per_row` tensor [b, ...]."""
    staying = [i for i, r in enumerate(rows.live) if not rows.done[r]]
    if len(staying) == len(rows.live):
        return per_row
    index = torch.tensor(staying, dtype=torch.long, device=cache.device)  # [b']
    target.keep_rows(cache, index)
    if draft is not None:
        draft.keep_rows(index)
    if ngrams is not None:
        ngrams.keep_rows(index)
    rows.live = [rows.live[i] for i in staying]
    return tuple(None if t is None else t.index_select(0, index.to(t.device)) for t in per_row)


def _emit(rows: Rows, new_tokens: list[list[int]], path_len: list[int], accepted: list[int], drafted: int,
          eos: frozenset[int], max_new_tokens: int) -> StepCounts:
    """Append each batch row's accepted tokens and bonus to its output, stopping at EOS or the
    limit; the step's counters, by request row (zeros for rows no longer in the batch)."""
    b = len(rows.outputs)
    counted = StepCounts(drafted=[0] * b, accepted=[0] * b, emitted=[0] * b, active=[False] * b)
    for i, r in enumerate(rows.live):
        n = 0
        for t in new_tokens[i][: path_len[i]]:  # path_len - 1 accepted draft tokens + the bonus
            rows.outputs[r].append(t)
            n += 1
            if t in eos or len(rows.outputs[r]) >= max_new_tokens:
                rows.done[r] = True
                break
        counted.drafted[r], counted.accepted[r], counted.emitted[r], counted.active[r] = drafted, accepted[i], n, True
    return counted
