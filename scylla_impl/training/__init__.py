"""Draft training: EAGLE-2, EAGLE-3 and Scylla drafts for any target, pretraining then SFT.

    from scylla_impl.training.config import recipe
    from scylla_impl.training.loop import train
    result = train(recipe("scylla", layers=3, pretrain_tokens=65536), out="drafts/scylla-3")

The package itself imports nothing: the recipes (config.py) read without torch, so
`scylla train --help` lists its options at once.

config.py     TrainConfig and the default recipe per method
data.py       each stage's packed sequences and its held-out ones
features.py   target features, online or cached on disk
losses.py     unrolled (training-time test) losses and per-position accuracy
schedule.py   every optimizer step's batch and learning rate, fixed up front (resume = a step counter)
draft_init.py where a new draft starts (fp32 view of the target, head and norm from the target's)
metrics.py    the log's losses and accuracies, and held-out top-1 agreement per unrolled depth
run_folder.py what a run writes (draft, config, log, checkpoints) and the checks before writing
display.py    progress bars, or a line at each evaluation off a terminal
loop.py       the Trainer: AdamW step over micro-batches, checkpoints, exact resume
distributed.py  torchrun / torch.distributed (gloo on CPU)
"""
