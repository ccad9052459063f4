"""Self-distillation data: the target's own answers to the SFT prompts.

A draft learns to predict what its target will say. ShareGPT's answers were written by
ChatGPT, and a small target writes very differently, so EAGLE's and SpecForge's recipes
regenerate the SFT answers with the target; so does this one. Answers are greedy (the T=0
the benchmarks decode at), made in batches by the decoder the benchmarks run, and kept as
JSON lines under SCYLLA_HOME/answers/<target fingerprint>/<key>.jsonl: a later run, or an
interrupted one, reuses every answer already written and generates only what is missing.
"""

import hashlib
import json
from pathlib import Path

from workloads.cache import scylla_home
from workloads.errors import ScyllaError
from workloads.progress import ProgressBar

# Long prompts are skipped: the answer must fit beside them in one training sequence.
MAX_PROMPT_TOKENS = 320
ANSWER_TOKENS = 192
BATCH = 32  # wide batches amortise the weight reads: 458 tok/s at 32 rows against 33 at one (bf16, 2 cores)
MARGIN = 1.1  # tokens generated beyond the budget, so packing never runs out and repeats data
# Batches in a row whose every answer is empty (whitespace or special tokens only) before the
# target is judged unable to answer chat prompts: a base model, or a degenerate one, would
# otherwise be asked every SFT prompt there is (tens of thousands) before the prompts ran out.
EMPTY_BATCHES = 2


def answers_path(target, dtype: str, system_prompt: str | None) -> Path:
    """One file per target, precision and answer settings, holding answers by prompt id: which
    prompts a run takes (seed, prompt mix, decontamination) only decides which records it reads,
    so runs with other mixes reuse every answer already made."""
    options = {"system_prompt": system_prompt, "answer_tokens": ANSWER_TOKENS,
               "max_prompt_tokens": MAX_PROMPT_TOKENS, "dtype": dtype}
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
    return scylla_home() / "answers" / target.info.fingerprint / f"{key}.jsonl"


def _read(path: Path) -> dict[str, dict]:
    """Records by prompt id. A prompt too long to answer is recorded without messages, so it is
    tokenized once, not on every run."""
    if not path.is_file():
        return {}
    records = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill: that answer is made again
            break
        records[record["id"]] = record
    return records


def target_answers(target, tokens: int, *, seed: int = 0, data_dir=None, decontaminate: bool = True,
                   system_prompt: str | None = None, mix: dict[str, float] | None = None,
                   progress: str = "none") -> list[list[dict]]:
    """Conversations [user prompt, the target's answer] holding at least `tokens` tokens in all,
    over the SFT prompts of `seed` and `mix` in their order (workloads.corpora.sft_prompts).
    They are generated in the faster precision of the device (scylla_impl/precision.py)."""
    from scylla_impl.decode import generate
    from scylla_impl.decode_config import DecodeConfig
    from scylla_impl.precision import fast_dtype
    from workloads.chat import render_chat, tokenize_conversation
    from workloads.corpora import sft_prompts

    dtype = fast_dtype(str(target.device))
    path = answers_path(target, dtype, system_prompt)
    cached = _read(path)
    want = int(tokens * MARGIN) + 2 * ANSWER_TOKENS
    order: list[str] = []  # the prompt ids this run walked, in order
    have = 0
    prompts = sft_prompts(seed, decontaminate=decontaminate, data_dir=data_dir, mix=mix)
    config = DecodeConfig(temperature=0.0, max_new_tokens=ANSWER_TOKENS)
    out = None
    empty_batches = empty_prompts = 0  # in a row
    bar = ProgressBar("train", "target answers", want, unit="tokens", rate_unit="tok", mode=progress, every_s=0)
    try:
        while have < want:
            # The next prompts in order, up to one batch of answers still to make.
            pending: list[tuple[str, list[dict], list[int]]] = []
            for pid, msgs in prompts:
                record = cached.get(pid)
                if record is not None:
                    order.append(pid)
                    have += record["tokens"]
                    bar.skip(record["tokens"])
                    if have >= want:
                        break
                    continue
                if str(target.dtype).removeprefix("torch.") != dtype:
                    from scylla_impl.target import Target

                    target = Target.load(target.info.path, dtype=dtype, device=str(target.device))
                ids = list(target.tokenizer(render_chat(target.tokenizer, msgs, system_prompt),
                                            add_special_tokens=False)["input_ids"])
                if len(ids) > MAX_PROMPT_TOKENS:  # no room for the answer in a training sequence
                    out = out or _open_for_append(path, cached)
                    cached[pid] = {"id": pid, "messages": None, "tokens": 0}
                    out.write(json.dumps(cached[pid]) + "\n")
                    continue
                order.append(pid)
                pending.append((pid, msgs, ids))
                if len(pending) == BATCH:
                    break
            if not pending:
                if have >= want:
                    break
                raise ScyllaError(f"the SFT prompts ran out after {have} of {want} tokens of target answers; "
                                  "lower --sft-tokens")
            result = generate(target, [ids for _, _, ids in pending], None, config)
            out = out or _open_for_append(path, cached)
            for (pid, msgs, _ids), text in zip(pending, result.texts):
                messages = [*msgs, {"role": "assistant", "content": text.strip()}] if text.strip() else None
                # Counted as training will tokenize it: a decoded answer need not re-encode to its own ids.
                # An empty answer teaches nothing: kept out, and not asked again.
                tokens = len(tokenize_conversation(target.tokenizer, messages, system_prompt)[0]) if messages else 0
                cached[pid] = {"id": pid, "messages": messages, "tokens": tokens}
                out.write(json.dumps(cached[pid]) + "\n")
            made = sum(cached[pid]["tokens"] for pid, _, _ in pending)
            empty_batches, empty_prompts = (0, 0) if made else (empty_batches + 1, empty_prompts + len(pending))
            if empty_batches == EMPTY_BATCHES:
                raise ScyllaError(f"{target.info.name} answered none of the last {empty_prompts} SFT "
                                  "prompts with any text (only whitespace or special tokens): it does not answer chat "
                                  "prompts, so its answers cannot teach a draft; train on ShareGPT's answers instead "
                                  "(--sft-answers sharegpt)")
            have += made
            bar.update(made)  # once per batch: its answers all arrive together
            out.flush()
    finally:
        bar.close()
        if out is not None:
            out.close()
    # The shortest prefix of the prompt order that holds `want` tokens, whatever the cache held
    # beyond it: a run's data does not depend on what earlier runs of other budgets generated.
    conversations, total = [], 0
    for pid in order:
        if total >= want:
            break
        record = cached[pid]
        if record["messages"] is not None:
            conversations.append(record["messages"])
            total += record["tokens"]
    return conversations


def _open_for_append(path: Path, records: dict[str, dict]):
    """The cache opened for appending, rewritten first without any torn last line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records.values()), encoding="utf-8")
    return path.open("a", encoding="utf-8")
