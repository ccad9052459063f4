"""Target features for training: computed online every step, or once into an on-disk cache.

What a draft learns from is the frozen target's view of each training sequence: the last
(post-norm) hidden state (EAGLE-2, Scylla, and the target distribution through the LM head)
and, for EAGLE-3, the inputs of three layers. Both sources run the same fp32 forward, so a
run reads bit-identical features either way (a test holds them to that).

Which is faster here: the target forward is ~2 x 135M FLOPs a token for the default target,
more than the whole draft update, and on these CPUs it runs at ~25-100 tokens/s. Online
pays it on every epoch of every draft; the cache pays it once per (target, data) and then
reads 9 KB a token back from disk, which is free at this speed. One epoch of one draft costs the
same either way (the cache's write and read are noise), so the cache is the default: the
four drafts of the comparison table share one extraction. Logits are not cached (V floats a
token would be 200 KB); the target's greedy next token at each position is (4 bytes), and the
CE's distribution is recomputed from the cached hidden state over the draft's vocabulary only.
Recomputed on every step, the target's argmax over its full vocabulary took a third of an
EAGLE-2 step in fp32 on a 2-core EPYC (33.5 of 124.7 s over 124 steps, cProfile).
"""

import functools
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from scylla_impl import skinny_linear
from scylla_impl.training.data import StageData
from scylla_impl.training.distributed import Dist
from workloads.cache import scylla_home
from workloads.files import atomic_write


@torch.no_grad()
def target_forward(target, input_ids: torch.Tensor, layers: tuple[int, ...]):
    """(hidden [b,T,h], layer inputs [b,T,len(layers)*h] or None), fp32 on the target's device.
    torch's matmul throughout: features must not depend on how the rows were batched."""
    with skinny_linear.off():
        out = target.decoder(input_ids=input_ids.to(target.device), use_cache=False,
                             output_hidden_states=bool(layers))
    hidden = out.last_hidden_state.float()
    feats = torch.cat([out.hidden_states[i] for i in layers], dim=-1).float() if layers else None
    return hidden, feats


def target_logits(target, hidden: torch.Tensor, vocab_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The target's logits from its last hidden state (what Target.features returns), fp32,
    through torch's matmul as the features are; with `vocab_ids` [V'], only those columns."""
    head = target.lm_head
    with skinny_linear.off():
        if vocab_ids is None:
            logits = head(hidden.to(target.dtype)).float()
        elif isinstance(head, torch.nn.Linear):  # a sixth of the head's rows for the default draft vocabulary
            bias = head.bias[vocab_ids] if head.bias is not None else None
            logits = F.linear(hidden.to(target.dtype), head.weight[vocab_ids], bias).float()
        else:
            logits = head(hidden.to(target.dtype)).float()[..., vocab_ids]
    if target.softcap:
        logits = torch.tanh(logits / target.softcap) * target.softcap
    return logits


TOP1_ROWS = 256  # positions per head matmul: bounds the [rows, V] logits of a long sequence


def target_top1(target, hidden: torch.Tensor) -> torch.Tensor:
    """The target's greedy next token at each position of `hidden` [b, T, h] -> [b, T] int64,
    over its full vocabulary. One sequence at a time, in fixed slices: a position's answer
    does not depend on the rows batched with it, so online and cached features agree."""
    return torch.stack([torch.cat([target_logits(target, part).argmax(-1) for part in seq.split(TOP1_ROWS)])
                        for seq in hidden])


class OnlineFeatures:
    """Runs the target on each batch as it is needed."""

    kind = "online"
    build_s = 0.0  # nothing is built ahead: each step's target forward is counted in the step

    def __init__(self, target, layers: tuple[int, ...]):
        self.target, self.layers = target, tuple(layers)

    def prepare(self, data: StageData, dist: Dist, progress=None) -> None:
        pass

    def get(self, data: StageData, rows: torch.Tensor):
        hidden, layers = target_forward(self.target, data.input_ids[rows], self.layers)
        return hidden, layers, target_top1(self.target, hidden)


class ChunkFiles(NamedTuple):
    ids: Path
    hidden: Path
    layers: Path
    top1: Path


class CachedFeatures:
    """Runs the target once over a stage's sequences into chunk files, then reads rows back.

    A chunk holds CHUNK sequences: their ids (checked on every read of the cache, so a chunk
    never serves other data), the last hidden state, the inputs of `store_layers` (EAGLE-3's
    default choice, kept for every method so one extraction serves all four drafts) and the
    target's greedy next token at each position. Chunks are written atomically, ids last, so an
    extraction that is killed resumes where it stopped, and a larger budget of the same corpus
    (same seed, same first sequences) only adds chunks. A chunk written before the next tokens
    were kept gets them from its stored hidden state, without the target's forward."""

    kind = "cache"
    CHUNK = 16

    def __init__(self, target, layers: tuple[int, ...], store_layers: tuple[int, ...] = (), root: Path | None = None,
                 batch: int = 4):
        self.target, self.layers = target, tuple(layers)
        self.store_layers = tuple(dict.fromkeys(tuple(store_layers) + self.layers))
        self.root = root or scylla_home() / "features" / target.info.fingerprint
        self.batch = batch
        self.folders: dict[str, Path] = {}
        self._chunks: dict[tuple[str, int], tuple[np.ndarray, np.ndarray | None, np.ndarray]] = {}
        self.build_s = 0.0

    def folder(self, data: StageData) -> Path:
        dtype = str(self.target.dtype).removeprefix("torch.")
        tag = "-".join(map(str, self.store_layers)) or "none"
        return self.root / f"{data.stage}-{data.key}-T{data.seq_len}-{dtype}-L{tag}"

    def _files(self, folder: Path, start: int) -> ChunkFiles:
        return ChunkFiles(*(folder / f"c{start:07d}.{part}.npy" for part in ChunkFiles._fields))

    def _has_features(self, data: StageData, folder: Path, start: int) -> bool:
        files = self._files(folder, start)
        if not files.hidden.is_file() or not files.ids.is_file() or (self.store_layers and not files.layers.is_file()):
            return False
        want = data.input_ids[start:start + self.CHUNK].numpy()
        try:
            have = np.load(files.ids)
        except (OSError, ValueError):
            return False
        # A chunk written for a larger budget of the same stream serves a smaller one too.
        return have.shape[1:] == want.shape[1:] and len(have) >= len(want) and bool((have[:len(want)] == want).all())

    def prepare(self, data: StageData, dist: Dist, progress=None) -> None:
        folder = self.folder(data)
        self.folders[data.stage] = folder
        has_features = {s: self._has_features(data, folder, s) for s in range(0, len(data), self.CHUNK)}
        missing = [s for s, has in has_features.items() if not (has and self._files(folder, s).top1.is_file())]
        dist.barrier()  # every process has looked before any writes: they agree on what is missing
        if missing:
            t0 = time.perf_counter()
            folder.mkdir(parents=True, exist_ok=True)
            mine = missing[dist.rank::dist.world]
            tokens = sum(min(self.CHUNK, len(data) - s) for s in mine) * data.seq_len
            bar = progress(f"target features ({data.stage})", tokens) if progress else None
            for start in mine:
                if has_features[start]:  # an older cache: only the next tokens are new
                    self._add_top1(data, folder, start, bar)
                else:
                    self._build_chunk(data, folder, start, bar)
            if bar:
                bar.close()
            self.build_s += time.perf_counter() - t0
        dist.barrier()

    def _build_chunk(self, data: StageData, folder: Path, start: int, bar) -> None:
        rows = torch.arange(start, min(start + self.CHUNK, len(data)))
        hidden, layers, top1 = [], [], []
        for i in range(0, len(rows), self.batch):
            hid, lay = target_forward(self.target, data.input_ids[rows[i:i + self.batch]], self.store_layers)
            hidden.append(hid.cpu().numpy())
            top1.append(target_top1(self.target, hid).cpu().numpy().astype(np.int32))
            if lay is not None:
                layers.append(lay.cpu().numpy())
            if bar:
                bar.update(len(rows[i:i + self.batch]) * data.seq_len)
        files = self._files(folder, start)
        # ids last: a chunk counts as written only once its ids are there.
        for path, array in [(files.hidden, np.concatenate(hidden)), (files.layers, np.concatenate(layers) if layers else None),
                            (files.top1, np.concatenate(top1)), (files.ids, data.input_ids[rows].numpy())]:
            if array is not None:
                atomic_write(path, functools.partial(_save_npy, array=array))

    def _add_top1(self, data: StageData, folder: Path, start: int, bar) -> None:
        files = self._files(folder, start)
        hidden = torch.from_numpy(np.load(files.hidden)).to(self.target.device)  # [rows, T, h]
        top1 = target_top1(self.target, hidden).cpu().numpy().astype(np.int32)  # [rows, T]
        atomic_write(files.top1, functools.partial(_save_npy, array=top1))
        if bar:
            bar.update(min(self.CHUNK, len(data) - start) * data.seq_len)

    def _chunk(self, stage: str, start: int):
        key = (stage, start)
        if key not in self._chunks:
            files = self._files(self.folders[stage], start)
            hidden = np.load(files.hidden, mmap_mode="r")
            layers = np.load(files.layers, mmap_mode="r") if self.layers else None
            self._chunks[key] = (hidden, layers, np.load(files.top1, mmap_mode="r"))
        return self._chunks[key]

    def get(self, data: StageData, rows: torch.Tensor):
        h = self.target.info.hidden_size
        cols = [self.store_layers.index(layer) for layer in self.layers]
        hid, lay, top = [], [], []
        for r in rows.tolist():
            start = r - r % self.CHUNK
            hidden, layers, top1 = self._chunk(data.stage, start)
            hid.append(np.asarray(hidden[r - start]))
            top.append(np.asarray(top1[r - start]))
            if self.layers:
                row = layers[r - start]
                lay.append(np.concatenate([row[:, c * h:(c + 1) * h] for c in cols], axis=-1))
        device = self.target.device
        hidden_t = torch.from_numpy(np.stack(hid)).to(device)
        top1_t = torch.from_numpy(np.stack(top)).to(device, torch.long)
        return hidden_t, (torch.from_numpy(np.stack(lay)).to(device) if self.layers else None), top1_t


def feature_source(kind: str, target, layers: tuple[int, ...], store_layers: tuple[int, ...] = (), batch: int = 4):
    if kind == "online":
        return OnlineFeatures(target, layers)
    return CachedFeatures(target, layers, store_layers, batch=batch)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would add ".npy" to a temporary's name
        np.save(fh, array)
