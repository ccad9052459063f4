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
import sys
import time
from pathlib import Path

from workloads.cache import scylla_home
from workloads.errors import ScyllaError

# Long prompts are skipped: the answer must fit beside them in one training sequence.
MAX_PROMPT_TOKENS = 320
ANSWER_TOKENS = 192
BATCH = 32  # wide batches amortise the weight reads: 458 tok/s at 32 rows against 33 at one (bf16, 2 cores)
MARGIN = 1.1  # tokens generated beyond the budget, so packing never runs out and repeats data


def answers_path(target, dtype: str, seed: int, data_dir, decontaminate: bool, system_prompt: str | None) -> Path:
    options = {"seed": seed, "data_dir": str(data_dir) if data_dir else None, "decontaminate": decontaminate,
               "system_prompt": system_prompt, "answer_tokens": ANSWER_TOKENS,
               "max_prompt_tokens": MAX_PROMPT_TOKENS, "dtype": dtype}
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
    return scylla_home() / "answers" / target.info.fingerprint / f"{key}.jsonl"


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill: that answer is made again
            break
    return records


def target_answers(target, tokens: int, *, seed: int = 0, data_dir=None, decontaminate: bool = True,
                   system_prompt: str | None = None, progress: str = "none") -> list[list[dict]]:
    """Conversations [user prompt, the target's answer] holding at least `tokens` tokens in all.
    They are generated in the faster precision of the device (scylla_impl/precision.py)."""
    from scylla_impl.decode import DecodeConfig, generate
    from scylla_impl.precision import fast_dtype
    from workloads.chat import render_chat
    from workloads.corpora import sft_prompts

    dtype = fast_dtype(str(target.device))
    path = answers_path(target, dtype, seed, data_dir, decontaminate, system_prompt)
    records = _read(path)
    want = int(tokens * MARGIN) + 2 * ANSWER_TOKENS
    have = sum(r["tokens"] for r in records)
    done_ids = {r["id"] for r in records}
    if have < want:
        path.parent.mkdir(parents=True, exist_ok=True)
        if records:  # rewrite without any torn last line before appending
            path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        if str(target.dtype).removeprefix("torch.") != dtype:
            from scylla_impl.target import Target

            target = Target.load(target.info.path, dtype=dtype, device=str(target.device))
        tok = target.tokenizer
        prompts = ((pid, msgs) for pid, msgs in sft_prompts(seed, decontaminate=decontaminate, data_dir=data_dir)
                   if pid not in done_ids)
        config = DecodeConfig(temperature=0.0, max_new_tokens=ANSWER_TOKENS)
        start, made = time.perf_counter(), 0
        with path.open("a", encoding="utf-8") as out:
            while have < want:
                batch = []
                for pid, msgs in prompts:
                    ids = list(tok(render_chat(tok, msgs, system_prompt), add_special_tokens=False)["input_ids"])
                    if len(ids) <= MAX_PROMPT_TOKENS:
                        batch.append((pid, msgs, ids))
                    if len(batch) == BATCH:
                        break
                if not batch:
                    raise ScyllaError(f"the SFT prompts ran out after {have} of {want} tokens of target answers; "
                                      "lower --sft-tokens")
                result = generate(target, [ids for _, _, ids in batch], None, config)
                for (pid, msgs, ids), answer_ids, text in zip(batch, result.token_ids, result.texts):
                    if not text.strip():
                        continue
                    record = {"id": pid, "messages": [*msgs, {"role": "assistant", "content": text.strip()}],
                              "tokens": len(ids) + len(answer_ids)}
                    out.write(json.dumps(record) + "\n")
                    records.append(record)
                    have += record["tokens"]
                    made += record["tokens"]
                out.flush()
                if progress != "none":
                    rate = made / max(time.perf_counter() - start, 1e-9)
                    print(f"[train] target answers: {min(have, want)}/{want} tokens, {rate:.0f} tok/s, "
                          f"{time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
    return [r["messages"] for r in records]
