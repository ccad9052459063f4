"""What a training run shows while it runs: a bar per stage (features) and one for the whole
run, with the loss and held-out acceptance beside the bar, or a line at each evaluation off a
terminal."""

import math

from workloads.progress import ProgressBar, resolve_mode


class TrainDisplay:
    def __init__(self, mode: str, enabled: bool):
        self.mode = resolve_mode(mode) if enabled else "none"
        self.bar = None

    def stage_bar(self, desc: str, total: int, initial: int = 0) -> ProgressBar:
        return ProgressBar("train", desc, total, unit="tokens", rate_unit="tok", mode=self.mode, initial=initial)

    def start(self, total: int, done: int) -> None:
        self.bar = self.stage_bar("train", total, done)

    def step(self, tokens: int, row: dict) -> None:
        post = {}
        if self.mode == "bar":
            post = {"tok/s": f"{row['tokens_per_s']:.0f}", "loss": f"{row['loss']:.3f}"}
            accs = [row.get(f"eval_acc_{k}") for k in range(8)]
            accs = [a for a in accs if a is not None and not math.isnan(a)]
            if accs:
                post["acc"] = "/".join(f"{a:.2f}" for a in accs[:5])
                post["sim"] = f"{row['sim_accept']:.2f}"
        self.bar.update(tokens, **post)
        if self.mode == "lines" and not math.isnan(row.get("sim_accept", math.nan)):
            accs = " ".join(f"{row[f'eval_acc_{k}']:.3f}" for k in range(8) if f"eval_acc_{k}" in row)
            self.bar.write(f"[train] step {row['step']} {row['stage']} loss {row['loss']:.4f} acc {accs} "
                           f"sim {row['sim_accept']:.3f} lr {row['lr']:.2e} tok/s {row['tokens_per_s']:.1f} "
                           f"elapsed {row['elapsed_s']:.0f}s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
