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
ANSWER_END_TOKENS = 8  # room for what the chat template adds after an answer (a conversation's tokens count it)
BATCH = 32  # wide batches amortise the weight reads: 458 tok/s at 32 rows against 33 at one (bf16, 2 cores)
# Prompts taken at a time and batched by length: a batch is padded to its longest prompt, in the
# prefill and in every step's attention. 128 first turns of the SFT prompts (83 tokens on
# average, up to 260), 64 new tokens each, in batches of 32, fp32, 2-core AVX2 EPYC: 117 s in
# prompt order, 82 s sorted by length.
WINDOW = 4 * BATCH
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
    from workloads.corpora import sft_prompts

    dtype = fast_dtype(str(target.device))
    answers = _AnswerFile(answers_path(target, dtype, system_prompt), system_prompt)
    want = int(tokens * MARGIN) + 2 * ANSWER_TOKENS
    order: list[str] = []  # the prompt ids this run walked, in order
    have = 0
    prompts = sft_prompts(seed, decontaminate=decontaminate, data_dir=data_dir, mix=mix)
    config = DecodeConfig(temperature=0.0, max_new_tokens=ANSWER_TOKENS)
    empty_batches = empty_prompts = 0  # in a row
    bar = ProgressBar("train", "target answers", want, unit="tokens", rate_unit="tok", mode=progress, every_s=0)
    try:
        while have < want:
            pending, reused = _next_batch(prompts, answers, target.tokenizer, order, want - have)
            have += reused
            bar.skip(reused)
            if not pending:
                if have >= want:
                    break
                raise ScyllaError(f"the SFT prompts ran out after {have} of {want} tokens of target answers; "
                                  "lower --sft-tokens")
            if str(target.dtype).removeprefix("torch.") != dtype:
                from scylla_impl.target import Target

                target = Target.load(target.info.path, dtype=dtype, device=str(target.device))
            by_length = sorted(pending, key=lambda p: len(p[2]))
            for batch in (by_length[i:i + BATCH] for i in range(0, len(by_length), BATCH)):
                texts = generate(target, [ids for _, _, ids in batch], None, config).texts
                made = sum(answers.add(pid, msgs, text, target.tokenizer) for (pid, msgs, _), text in zip(batch, texts))
                empty_batches, empty_prompts = (0, 0) if made else (empty_batches + 1, empty_prompts + len(batch))
                if empty_batches == EMPTY_BATCHES:
                    raise ScyllaError(f"{target.info.name} answered none of the last {empty_prompts} SFT "
                                      "prompts with any text (only whitespace or special tokens): it does not answer "
                                      "chat prompts, so its answers cannot teach a draft; train on ShareGPT's answers "
                                      "instead (--sft-answers sharegpt)")
                have += made
                bar.update(made)  # once per batch: its answers all arrive together
                answers.flush()
    finally:
        bar.close()
        answers.close()
    # The shortest prefix of the prompt order that holds `want` tokens, whatever the cache held
    # beyond it: a run's data does not depend on what earlier runs of other budgets generated.
    conversations, total = [], 0
    for pid in order:
        if total >= want:
            break
        record = answers.records[pid]
        if record["messages"] is not None:
            conversations.append(record["messages"])
            total += record["tokens"]
    return conversations


def _next_batch(prompts, answers: "_AnswerFile", tokenizer, order: list[str],
                need: int) -> tuple[list[tuple[str, list[dict], list[int]]], int]:
    """The next prompts in order, up to WINDOW of (id, messages, prompt ids) still to answer,
    and the tokens of the answers found made already on the way. It stops once those and the
    most the pending answers can add reach `need`, so the prompts it returns are all needed.
    Both kinds join `order`; a prompt too long to answer is recorded, not batched."""
    from workloads.chat import render_chat

    pending, reused, most = [], 0, 0
    for pid, msgs in prompts:
        record = answers.records.get(pid)
        if record is not None:
            order.append(pid)
            reused += record["tokens"]
            if reused + most >= need:
                break
            continue
        ids = list(tokenizer(render_chat(tokenizer, msgs, answers.system_prompt), add_special_tokens=False)["input_ids"])
        if len(ids) > MAX_PROMPT_TOKENS:  # no room for the answer in a training sequence
            answers.write({"id": pid, "messages": None, "tokens": 0})
            continue
        order.append(pid)
        pending.append((pid, msgs, ids))
        most += len(ids) + ANSWER_TOKENS + ANSWER_END_TOKENS
        if len(pending) == WINDOW or reused + most >= need:
            break
    return pending, reused


class _AnswerFile:
    """The cache of one target's answers: records by prompt id, read once, appended to as
    answers are made (rewritten first without any torn last line)."""

    def __init__(self, path: Path, system_prompt: str | None):
        self.path, self.system_prompt = path, system_prompt
        self.records = _read(path)
        self._out = None

    def add(self, pid: str, msgs: list[dict], text: str, tokenizer) -> int:
        """Record the target's answer to a prompt; returns its conversation's tokens, counted as
        training will tokenize it (a decoded answer need not re-encode to its own ids). An empty
        answer teaches nothing: kept out (0 tokens), and not asked again."""
        from workloads.chat import tokenize_conversation

        messages = [*msgs, {"role": "assistant", "content": text.strip()}] if text.strip() else None
        tokens = len(tokenize_conversation(tokenizer, messages, self.system_prompt)[0]) if messages else 0
        self.write({"id": pid, "messages": messages, "tokens": tokens})
        return tokens

    def write(self, record: dict) -> None:
        if self._out is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records.values()), encoding="utf-8")
            self._out = self.path.open("a", encoding="utf-8")
        self.records[record["id"]] = record
        self._out.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        if self._out is not None:
            self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
