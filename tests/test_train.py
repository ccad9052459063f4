"""Draft training on a tiny random Llama (real architecture, real tokenizer): the three methods
train, save, reload and decode losslessly; training computes exactly what decoding runs;
online and cached features train identically; bad input fails with one clear error."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from scylla_impl.decode import generate
from scylla_impl.decode_config import DecodeConfig
from scylla_impl.drafts import load_draft, new_draft
from scylla_impl.target import Target
from scylla_impl.training.config import TrainConfig
from scylla_impl.training.loop import train
from scylla_impl.training.losses import unroll
from scylla_impl.training.run_folder import checkpoints
from workloads.errors import ScyllaError

SEQ = 32


def make_tiny(folder, tokenizer_dir, seed: int = 0):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, default_model_dir):
    return make_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama", default_model_dir)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return Target.load(str(tiny_dir), dtype="float32")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """Some real English prose and code to pretrain on: a few standard-library modules."""
    import json
    import textwrap

    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n\n".join(Path(m.__file__).read_text() for m in (textwrap, json.decoder)))
    return path


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SCYLLA_HOME", str(tmp_path / "home"))


def small(method: str, tiny_dir, text_file, **overrides) -> TrainConfig:
    values = dict(method=method, target=str(tiny_dir), layers=2 if method == "scylla" else None,
                  pretrain_tokens=SEQ * 16, sft_tokens=0, seq_len=SEQ, batch_size=4, micro_batch=2,
                  pretrain_data=str(text_file), decontaminate=False, ce_fraction=0.5, log_every=2,
                  checkpoint_every=100, eval_sequences=1, eval_steps=3,
                  ttt_steps=2 if method == "eagle3" else 1)
    values.update(overrides)
    return TrainConfig(**values)


def prompts(target):
    tok = target.tokenizer
    return [tok("The State of the Union is", add_special_tokens=False)["input_ids"],
            tok("def main():\n    return", add_special_tokens=False)["input_ids"]]


@pytest.mark.parametrize("draft_vocab", [0, 1024])
@pytest.mark.parametrize("method", ["eagle2", "eagle3", "scylla"])
def test_train_save_reload_decode_lossless(method, draft_vocab, tiny, tiny_dir, text_file, tmp_path):
    config = small(method, tiny_dir, text_file, draft_vocab=draft_vocab)
    result = train(config, tmp_path / "run", target=tiny, progress="none")
    assert result.steps == 4 and result.tokens == SEQ * 16
    log = pd.read_parquet(tmp_path / "run" / "train_log.parquet")
    assert len(log) == 4 and log["loss"].notna().all()
    assert {"lr", "loss_ce", "eval_acc_0", "eval_acc_2", "sim_accept", "tokens_per_s"} <= set(log.columns)
    assert log["sim_accept"].notna().sum() == 2  # logged every 2 steps
    draft = load_draft(str(result.out), tiny)
    assert draft.config.method == method and draft.config.pretrain_tokens == SEQ * 16
    if method == "scylla":
        assert draft.config.num_layers == 2
    assert draft.reduced == bool(draft_vocab)
    if draft_vocab:
        # The draft vocabulary is the most frequent trained tokens, stored as EAGLE-3 and SpecForge
        # store it: d2t[i] = target id - i, t2d marks the kept target ids.
        from safetensors.torch import load_file

        from scylla_impl.training.data import build_stage, token_counts

        stored = load_file(str(result.out / "model.safetensors"))
        ids = torch.arange(draft_vocab) + stored["d2t"]
        assert (ids.diff() > 0).all() and stored["t2d"].sum() == draft_vocab and stored["t2d"][ids].all()
        counts = token_counts([build_stage(config, tiny.tokenizer, "pretrain")], tiny.info.vocab_size)
        assert counts[ids].min() >= counts[~stored["t2d"]].max()
        assert torch.equal(draft.to_target(torch.arange(draft_vocab)), ids)
    config = DecodeConfig(top_k=4, depth=3, total_tokens=12, max_new_tokens=16)
    ar = generate(tiny, prompts(tiny), None, config)
    spec = generate(tiny, prompts(tiny), draft, config)
    assert spec.token_ids == ar.token_ids
    assert spec.stats.tau >= 1.0


@pytest.mark.parametrize("method,draft_input", [("eagle2", None), ("eagle3", None), ("scylla", None),
                                                ("scylla", "concat")])
def test_unrolled_training_computes_what_decoding_runs(method, draft_input, tiny):
    """Step 0 of the unroll equals the draft's `extend` over the same pairs, and step k equals
    `expand` of the chain fed with the draft's own outputs: the alignment decoding uses."""
    torch.manual_seed(0)
    draft = new_draft(method, tiny, layers=2 if method == "scylla" else None, seed=1, draft_input=draft_input,
                      dtype=torch.float32)  # training's precision, whatever decoding would give it
    tokens = torch.randint(0, 1000, (1, 12))
    out = tiny.features(tokens, draft.feature_layers)
    feats = out.layer_inputs if draft.feature_layers else out.hidden
    steps = 3
    with torch.no_grad():
        outs = unroll(draft, tokens, feats[:, :-1], steps)
    t0 = 6  # the "prompt" is tokens[:t0 + 1]; its last pair is (token t0 + 1, feature t0)
    draft.start([tokens[0, :t0 + 1].tolist()], capacity=64)
    _, last = draft.extend(tokens[:, 1:t0 + 2], feats[:, :t0 + 1], torch.tensor([t0 + 1]))
    torch.testing.assert_close(last, outs[0][:, t0], rtol=1e-4, atol=1e-5)
    ancestors = torch.zeros(1, 1, 0, dtype=torch.bool)
    hidden = last[:, None]
    for k in range(1, steps):
        mask = torch.cat([ancestors, torch.ones(1, 1, 1, dtype=torch.bool)], dim=-1)
        _, hidden = draft.expand(tokens[:, t0 + k + 1:t0 + k + 2], hidden, torch.tensor([[k - 1]]), mask)
        torch.testing.assert_close(hidden[:, 0], outs[k][:, t0], rtol=1e-4, atol=1e-5)
        ancestors = mask
    draft.rollback()


def test_the_input_ablation_trains_reloads_and_decodes_losslessly(tiny, tiny_dir, text_file, tmp_path):
    """Scylla with plain concatenation instead of its input projection (scylla_impl/drafts/scylla.py):
    no projection, its first layer's attention reads 2h, about as many parameters; the checkpoint
    says which it is, and decoding with it is lossless."""
    result = train(small("scylla", tiny_dir, text_file, draft_input="concat"), tmp_path / "run", target=tiny,
                   progress="none")
    draft = load_draft(str(result.out), tiny)
    assert draft.config.draft_input == "concat" and draft.info.draft_input == "concat"
    assert json.loads((result.out / "config.json").read_text())["draft_input"] == "concat"
    names = {n for n, _ in draft.named_parameters()}
    assert not any(n.startswith("fc.") for n in names) and "hidden_norm.weight" in names
    assert draft.layers[0].self_attn.q_proj.in_features == 2 * tiny.info.hidden_size
    projection = new_draft("scylla", tiny, layers=2)
    assert projection.config.draft_input == "projection"
    sizes = [sum(p.numel() for p in d.parameters()) for d in (draft, projection)]
    assert abs(sizes[0] - sizes[1]) / sizes[1] < 0.1
    config = DecodeConfig(top_k=4, depth=3, total_tokens=12, max_new_tokens=16)
    assert generate(tiny, prompts(tiny), draft, config).token_ids == generate(tiny, prompts(tiny), None, config).token_ids


def test_a_draft_input_its_method_has_not_is_refused(tiny, tiny_dir, text_file, tmp_path):
    with pytest.raises(ScyllaError, match="eagle2 drafts take draft input projection, not 'concat'"):
        small("eagle2", tiny_dir, text_file, draft_input="concat")
    with pytest.raises(ScyllaError, match="eagle3 drafts take draft input concat, not 'projection'"):
        new_draft("eagle3", tiny, draft_input="projection")
    # A checkpoint from before the field was recorded reads as its method's own input path.
    for method, own in (("eagle3", "concat"), ("scylla", "projection")):
        folder = new_draft(method, tiny).save(tmp_path / method)
        config = json.loads((folder / "config.json").read_text())
        assert config.pop("draft_input") == own
        (folder / "config.json").write_text(json.dumps(config))
        assert load_draft(str(folder), tiny).info.draft_input == own
    done = subprocess.run([sys.executable, "-m", "harness.cli", "train", "--method", "eagle2", "--draft-input",
                           "concat", "--target", str(tiny_dir), "--pretrain-tokens", "4k", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert done.returncode != 0 and done.stderr.startswith("error:") and "Traceback" not in done.stderr
    assert "eagle2 drafts take draft input projection, not 'concat'" in done.stderr


@pytest.mark.parametrize("draft_vocab", [0, 512])
def test_online_and_cached_features_train_identically(tiny, tiny_dir, text_file, tmp_path, monkeypatch, draft_vocab):
    """The target's next tokens, kept with the features, and the CE's distribution over the draft's
    own vocabulary (512 of the target's ids here) are the ones computed online, step by step."""
    from scylla_impl.training import features

    logs = {}
    for kind in ("online", "cache"):
        train(small("eagle2", tiny_dir, text_file, features=kind, draft_vocab=draft_vocab), tmp_path / kind,
              target=tiny, progress="none")
        logs[kind] = pd.read_parquet(tmp_path / kind / "train_log.parquet")
    # A cache written before the next tokens were kept gets them from its hidden states alone.
    kept = sorted((Path(os.environ["SCYLLA_HOME"]) / "features").rglob("*.top1.npy"))
    assert kept
    # Each is the argmax of transformers' own logits at its position (up to near-ties).
    ids = np.load(str(kept[0]).replace(".top1.", ".ids."))  # [CHUNK, T]
    with torch.no_grad():
        want = tiny.model(torch.from_numpy(ids)).logits.argmax(-1).numpy()
    assert np.load(kept[0]).shape == ids.shape and (np.load(kept[0]) == want).mean() > 0.99
    for path in kept:
        path.unlink()
    monkeypatch.setattr(features, "target_forward", lambda *a: pytest.fail("the cached features were computed again"))
    train(small("eagle2", tiny_dir, text_file, draft_vocab=draft_vocab), tmp_path / "older", target=tiny, progress="none")
    logs["older cache"] = pd.read_parquet(tmp_path / "older" / "train_log.parquet")
    assert all(path.is_file() for path in kept)
    for column in ("loss", "loss_feature", "loss_ce", "train_acc_0", "grad_norm", "eval_acc_1"):
        online, cache, older = (logs[k][column].fillna(-1).tolist() for k in ("online", "cache", "older cache"))
        assert online == cache == older, column


def test_pretrain_then_sft_on_the_real_corpora(tiny, tiny_dir, tmp_path, capsys):
    config = TrainConfig(method="scylla", target=str(tiny_dir), layers=1, pretrain_tokens=SEQ * 8,
                         sft_tokens=SEQ * 8, seq_len=SEQ, batch_size=4, micro_batch=4, ce_fraction=0.5,
                         log_every=1, eval_sequences=1, eval_steps=2, checkpoint_every=1, keep_checkpoints=1)
    result = train(config, tmp_path / "run", target=tiny, progress="lines")
    err = capsys.readouterr().err
    # Features cover the training budget and the stage's held-out sequence.
    assert "[train] target features (sft): 288/288 tokens" in err and "[train] step 4 sft loss" in err
    assert f"[train] train: {SEQ * 16}/{SEQ * 16} tokens" in err  # the whole run, as it ends
    log = pd.read_parquet(tmp_path / "run" / "train_log.parquet")
    assert log["stage"].tolist() == ["pretrain", "pretrain", "sft", "sft"]
    assert log["eval_acc_0"].iloc[:2].notna().all()  # measured on the held-out pretraining sequence
    # Stage 2 starts its own warm-up and cosine.
    assert log["lr"].iloc[2] == log["lr"].iloc[0] > log["lr"].iloc[1]
    draft = load_draft(str(result.out), tiny)
    assert (draft.config.pretrain_tokens, draft.config.sft_tokens) == (SEQ * 8, SEQ * 8)
    assert len(checkpoints(tmp_path / "run")) == 1


def test_training_lowers_the_loss(tiny, tiny_dir, text_file, tmp_path):
    config = small("eagle2", tiny_dir, text_file, epochs=4, lr=3e-3, log_every=100)
    train(config, tmp_path / "run", target=tiny, progress="none")
    loss = pd.read_parquet(tmp_path / "run" / "train_log.parquet")["loss"]
    assert loss.iloc[-4:].mean() < 0.95 * loss.iloc[:4].mean()


# -- bad input ------------------------------------------------------------------------------
def test_corpus_too_small_for_the_budget(tiny, tiny_dir, tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("A short document that holds far fewer tokens than the budget asks for. " * 5)
    config = small("eagle2", tiny_dir, text, pretrain_tokens=SEQ * 64)
    with pytest.raises(ScyllaError, match="pretrain corpus is too small for --pretrain-tokens 2048"):
        train(config, tmp_path / "run", target=tiny, progress="none")


def test_sft_needs_a_chat_template(tiny, tiny_dir, tmp_path):
    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = None
    bare = Target(tiny.model, tokenizer, tiny.info)
    config = TrainConfig(method="eagle2", target=str(tiny_dir), pretrain_tokens=0, sft_tokens=SEQ * 4,
                         seq_len=SEQ, batch_size=4)
    with pytest.raises(ScyllaError, match="has no chat template"):
        train(config, tmp_path / "run", target=bare, progress="none")


def test_existing_run_needs_resume_or_force(tiny, tiny_dir, text_file, tmp_path):
    config = small("eagle2", tiny_dir, text_file, pretrain_tokens=SEQ * 4)
    train(config, tmp_path / "run", target=tiny, progress="none")
    with pytest.raises(ScyllaError, match="pass --resume to continue it"):
        train(config, tmp_path / "run", target=tiny, progress="none")
    train(config, tmp_path / "run", target=tiny, progress="none", force=True)


def test_resume_refuses_a_run_of_another_target(tiny, tiny_dir, text_file, tmp_path, default_model_dir):
    config = small("eagle2", tiny_dir, text_file, checkpoint_every=2)
    train(config, tmp_path / "run", target=tiny, progress="none")
    other = make_tiny(tmp_path / "other-llama", default_model_dir, seed=1)
    done = subprocess.run([sys.executable, "-m", "harness.cli", "train", "--target", str(other), "--resume",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert "was trained for target" in lines[0] and "cannot resume" in lines[0]


def test_a_batch_with_nothing_to_learn_still_steps(tiny):
    """A chat chunk with no assistant token has no loss; backward still runs (zero gradients),
    so a DDP rank holding it stays in step with the others."""
    from scylla_impl.training.features import target_top1
    from scylla_impl.training.losses import Batch, Denominators, UnrolledLoss, make_labels

    draft = new_draft("eagle2", tiny, dtype=torch.float32).train()  # as the training loop makes it
    tokens = torch.randint(0, 1000, (2, SEQ))
    out = tiny.features(tokens)
    batch = Batch(tokens, torch.zeros(2, SEQ, dtype=torch.bool), out.hidden, out.hidden, target_top1(tiny, out.hidden),
                  [1, 2])
    batch.labels = make_labels(tiny, draft, batch, 1, 1.0, True)
    loss, stats = UnrolledLoss(draft, TrainConfig(method="eagle2", pretrain_tokens=SEQ * 4, seq_len=SEQ))(
        batch, Denominators([0.0], [0.0]))
    loss.backward()
    assert loss.item() == 0.0 and stats.sum() == 0
    assert all(p.grad is not None and not p.grad.any() for p in draft.parameters())


def test_default_drafts_are_trained_on_first_use_and_kept(tiny, monkeypatch, capsys):
    import scylla_impl.training.config as recipes
    from scylla_impl.trained import default_draft_spec, drafts_dir, ensure_trained_draft

    with pytest.raises(ScyllaError, match="scylla train --method scylla --layers 3 --name scylla-3"):
        default_draft_spec(tiny, "scylla")
    monkeypatch.setitem(recipes.BUDGETS, "default", recipes.Budget(1024, 1024, 2))
    path = ensure_trained_draft(tiny, "scylla", progress="none")
    said = capsys.readouterr().err
    assert "training the default scylla recipe" in said
    # How long, for the precision training runs in here.
    from scylla_impl.precision import fast_dtype
    from scylla_impl.trained import RECIPE_MINUTES

    per_draft, once = RECIPE_MINUTES[fast_dtype("cpu")]
    assert f"about {per_draft} min a draft on 2 CPU cores in {fast_dtype('cpu')}, and {once} min once per target" in said
    assert path == str(drafts_dir(tiny) / "scylla-3") == default_draft_spec(tiny, "scylla")
    draft = load_draft(path, tiny)
    # The config stamps tokens trained on, every pass over the data counted.
    assert draft.config.num_layers == 3 and draft.config.sft_tokens == 1024 * 2
    assert (drafts_dir(tiny) / "scylla-3" / "train_log.parquet").is_file()
    # Its features come from the target in the precision decoding runs it in by default.
    from scylla_impl.precision import fast_dtype
    from scylla_impl.training.config import CONFIG_FILE

    assert TrainConfig.load(drafts_dir(tiny) / "scylla-3" / CONFIG_FILE).dtype == fast_dtype("cpu")
    assert ensure_trained_draft(tiny, "scylla") == path  # kept: no second training
    assert capsys.readouterr().err == ""
