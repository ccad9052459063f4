"""A KV cache whose batch rows keep their own lengths, with a tentative region for trees.

Layout per layer: keys/values [batch, kv_heads, capacity, head_dim] (values may have a head_dim
of their own: DeepSeek's latent attention). Physical slots
[0, committed_end) hold each row's committed tokens from slot 0 up to `lengths[row]`;
slots between a row's length and `committed_end` are holes, masked out. Tokens scored
but not yet accepted (a draft tree) sit after `committed_end` in the tentative region.
`commit` moves each row's accepted tentative tokens down to that row's own length;
`rollback` forgets the tentative region. Both the target and the drafts use this class,
so the AR baseline and speculative decoding share one cache implementation.

A static cache (`static=True`, the compiled path) keeps its buffers at `capacity` slots and
hands attention the whole buffer, masking the slots not in use: a step's shapes then depend
on the batch and the tokens it scores, never on how long the rows are, so one compiled graph
serves every step (gpt-fast's pattern). Writes go through a slot-index tensor made before the
forward, so nothing inside the forward reads the cache's Python counters.
"""

import torch


class RowKVCache:
    def __init__(self, num_layers: int, batch_size: int, device: torch.device | str, capacity: int = 256,
                 static: bool = False):
        self.num_layers = num_layers
        self.static = static
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.capacity = capacity
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.committed_end = 0  # first slot after every row's committed tokens
        self.tentative = 0  # tentative tokens appended after committed_end
        self.tentative_depths = torch.zeros(batch_size, 0, dtype=torch.long, device=self.device)  # [b, tentative]
        self._pending = 0  # tokens of the forward in flight (written by update())
        self._slots: torch.Tensor | None = None  # static: the slots the forward in flight writes [q]

    # -- used by attention layers ------------------------------------------------
    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this forward's keys/values [b, h, q, d]; return views over all live slots
        (static: the whole buffer)."""
        if self.static:
            if self.keys[layer] is None:
                self.keys[layer], self.values[layer] = (t.new_zeros(self.batch_size, t.shape[1], self.capacity, t.shape[-1])
                                                        for t in (key, value))
            self.keys[layer].index_copy_(2, self._slots, key)
            self.values[layer].index_copy_(2, self._slots, value)
            return self.keys[layer], self.values[layer]
        q = key.shape[-2]
        start = self.committed_end + self.tentative
        end = start + q
        if self.keys[layer] is None:
            size = max(self.capacity, end + 1)
            self.keys[layer], self.values[layer] = (t.new_zeros(self.batch_size, t.shape[1], size, t.shape[-1])
                                                    for t in (key, value))
        elif end + 1 > self.keys[layer].shape[2]:
            self._grow(layer, max(end + 1, 2 * self.keys[layer].shape[2]))
        self.keys[layer][:, :, start:end] = key
        self.values[layer][:, :, start:end] = value
        self._pending = q
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def _grow(self, layer: int, size: int) -> None:
        old_k, old_v = self.keys[layer], self.values[layer]
        new_k = old_k.new_zeros(*old_k.shape[:2], size, old_k.shape[-1])
        new_v = old_v.new_zeros(*old_v.shape[:2], size, old_v.shape[-1])
        new_k[:, :, : old_k.shape[2]] = old_k
        new_v[:, :, : old_v.shape[2]] = old_v
        self.keys[layer], self.values[layer] = new_k, new_v

    def _reserve(self, q: int) -> None:
        """Static: room for a forward of q tokens plus commit's scratch slot (the buffers double
        when short, which costs one recompile), and the slots it writes."""
        start = self.committed_end + self.tentative
        if start + q + 1 > self.capacity:
            self.capacity = max(start + q + 1, 2 * self.capacity)
            for layer in range(self.num_layers):
                if self.keys[layer] is not None:
                    self._grow(layer, self.capacity)
        self._slots = torch.arange(start, start + q, device=self.device)
        self._pending = q

    # -- bookkeeping around one forward ---------------------------------------------
    def attention_mask(self, new_mask: torch.Tensor) -> torch.Tensor:
        """Mask for the next forward of q tokens.

        new_mask: bool [b, q, tentative + q], what each new token may see among the
        tentative tokens and the new ones (ancestors and itself). Committed tokens of
        the row are always visible; holes never. Returns bool [b, 1, q, kv] (True =
        attend); kv is every slot of a static cache, whose unused slots are never visible.
        A static cache reserves the forward's slots here, since the mask is made before it.
        """
        b, q, t = new_mask.shape
        if t != self.tentative + q:
            raise ValueError(f"new_mask covers {t} slots, expected {self.tentative + q}")
        slots = torch.arange(self.committed_end, device=self.device)
        prefix = (slots[None, :] < self.lengths[:, None])[:, None, :].expand(b, q, -1)
        parts = [prefix, new_mask.to(self.device)]
        if self.static:
            self._reserve(q)
            unused = self.capacity - self.committed_end - t
            parts.append(torch.zeros(b, q, unused, dtype=torch.bool, device=self.device))
        return torch.cat(parts, dim=-1)[:, None]

    def positions(self, depths: torch.Tensor) -> torch.Tensor:
        """Absolute positions of new tokens at `depths` [b, q] below each row's next slot."""
        return self.lengths[:, None] + depths.to(self.device)

    def key_positions(self, depths: torch.Tensor) -> torch.Tensor:
        """Absolute position of every slot the next forward attends to, [b, kv]: committed
        slots hold position = slot (holes too; the mask hides them), tentative and new
        tokens sit at their row's length plus their depth. Sliding windows measure from these."""
        b = self.batch_size
        slots = torch.arange(self.committed_end, device=self.device).expand(b, -1)  # [b, committed_end]
        tree = self.lengths[:, None] + torch.cat([self.tentative_depths, depths.to(self.device)], dim=1)
        parts = [slots, tree]
        if self.static:  # unused slots: any position, the mask hides them
            parts.append(slots.new_zeros(b, self.capacity - self.committed_end - tree.shape[1]))
        return torch.cat(parts, dim=1)  # [b, committed_end + tentative + q] (static: [b, capacity])

    def advance(self, depths: torch.Tensor) -> None:
        """Called after each forward: the tokens just written, at `depths` [b, q], join the
        tentative region (their positions are kept for `key_positions`)."""
        self.tentative_depths = torch.cat([self.tentative_depths, depths.to(self.device)], dim=1)
        self.tentative += self._pending
        self._pending = 0
        self._slots = None

    def commit(self, keep: torch.Tensor, counts: torch.Tensor) -> None:
        """Keep, per row, tentative slots keep[row, :counts[row]] (ascending) and drop the rest."""
        if keep.numel() and keep.shape[1] > 0:
            m = keep.shape[1]
            keep = keep.to(self.device)
            counts = counts.to(self.device)
            valid = torch.arange(m, device=self.device)[None, :] < counts[:, None]
            src = self.committed_end + keep
            dst = self.lengths[:, None] + torch.arange(m, device=self.device)[None, :]
            moving = valid & (src != dst)  # [b, m]; an AR step at batch 1 keeps its token where it was written
            if bool(moving.any()):
                rows = moving.nonzero()[:, 0]  # [moves]
                src, dst = src[moving], dst[moving]  # [moves]
                # Each buffer [b, h, capacity, d] as rows of d: every head of every move in one
                # index_select and one index_copy_. A gather and a scatter over expanded indices per
                # buffer took 1.3 ms for the embedded target's 30 layers at batch 1 and 3.4 at batch
                # 4 (bf16, 2-core EPYC); this takes 0.4 and 0.5.
                flat: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # (h, capacity) -> rows
                for buf in (*self.keys, *self.values):
                    if buf is None:
                        continue
                    h, cap = buf.shape[1], buf.shape[2]
                    if (h, cap) not in flat:
                        base = (rows[:, None] * h + torch.arange(h, device=self.device)) * cap  # [moves, h]
                        flat[h, cap] = ((base + src[:, None]).reshape(-1), (base + dst[:, None]).reshape(-1))
                    at_src, at_dst = flat[h, cap]
                    rows_of_d = buf.view(-1, buf.shape[3])  # [b * h * capacity, d]
                    rows_of_d.index_copy_(0, at_dst, rows_of_d.index_select(0, at_src))
            self.lengths = self.lengths + counts
        self.committed_end = int(self.lengths.max()) if self.batch_size else 0
        self.rollback()

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` [b'] (ascending), dropping the others: rows that finished
        decoding stop costing every later forward attention and matmul work, and the slots
        attended to shrink to the longest row still decoding. Nothing may be tentative."""
        if self.tentative or self._pending:
            raise ValueError("keep_rows needs a cache with nothing tentative (commit or roll back first)")
        rows = rows.to(self.device)
        for buffers in (self.keys, self.values):
            for layer, buf in enumerate(buffers):
                if buf is not None:
                    buffers[layer] = buf.index_select(0, rows)  # [b', h, capacity, d]
        self.lengths = self.lengths.index_select(0, rows)
        self.tentative_depths = self.tentative_depths.index_select(0, rows)  # [b', 0]
        self.batch_size = int(rows.numel())
        self.committed_end = int(self.lengths.max()) if self.batch_size else 0
        self.rollback()

    def repeat_row(self, source: "RowKVCache") -> None:
        """Make every row a copy of `source`'s one committed row: b identical prefills for the
        price of one (the roofline's verify timings at batch b)."""
        if source.batch_size != 1 or source.num_layers != self.num_layers:
            raise ValueError(f"repeat_row needs a one-row cache of {self.num_layers} layers, got "
                             f"{source.batch_size} rows of {source.num_layers}")
        for layer, (k, v) in enumerate(zip(source.keys, source.values, strict=True)):
            self.keys[layer] = None if k is None else k.expand(self.batch_size, -1, -1, -1).contiguous()
            self.values[layer] = None if v is None else v.expand(self.batch_size, -1, -1, -1).contiguous()
        self.lengths = source.lengths.expand(self.batch_size).clone()
        self.committed_end = source.committed_end
        self.rollback()

    def rollback(self) -> None:
        self.tentative = 0
        self.tentative_depths = self.tentative_depths[:, :0]
        self._pending = 0
        self._slots = None
