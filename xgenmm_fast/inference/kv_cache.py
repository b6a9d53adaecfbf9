"""Per-layer KV cache for batched generation, in the layout `ops.attention.decode_attention` reads.

    k[layer], v[layer]   (B, Hkv, Tmax, D)   keys after RoPE / values of every cached position
    seqlens              (B,) int32           cached positions per row (on the device, for the kernels)
    lengths              list[int]            the same on the host (no device sync to read it)

Row b holds its sequence's tokens at cache positions 0..lengths[b]-1, which are also their RoPE
positions: a prompt is stored without padding (the packed prefill writes each sequence from 0), so
left-padded prompts and prompts of different lengths need no position bookkeeping.

One forward over the cache is a *step*: `begin_prefill` (packed prompts into empty rows) or
`begin_decode` (T new tokens per row at the end of each row), then every layer calls `append` with its
new keys/values and `view` for what to attend to, then `commit` advances the lengths. The sliding window
is not applied here (the cache keeps every position); the attention op masks keys outside it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


class KVCache:
    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype, device):
        if max_len < 1:
            raise ValueError(f"KVCache: max_len must be >= 1, got {max_len}")
        shape = (batch, num_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = [0] * batch
        self.seqlens = torch.zeros(batch, dtype=torch.int32, device=device)
        self._rows: torch.Tensor | None = None  # write targets of the current step
        self._pos: torch.Tensor | None = None
        self._new: list[int] | None = None  # tokens each row gains in the current step
        self._attend_len = 0  # keys to read this step: max over rows of the length after the step
        self._after: torch.Tensor | None = None  # seqlens after the current step (B,)

    @classmethod
    def for_model(cls, text_config, batch: int, max_len: int, dtype: torch.dtype, device) -> KVCache:
        t = text_config
        return cls(t.num_hidden_layers, batch, t.num_key_value_heads, t.head_dim, max_len, dtype, device)

    # ---- sizes -------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2] if self.k else 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    # ---- steps -------------------------------------------------------------------------------------
    def begin_prefill(self, cu_seqlens: torch.Tensor) -> None:
        """Packed prompts, one per row: cu_seqlens (B + 1,); sequence b is written at 0..n_b-1.

        Rows must be empty (a prompt is written from position 0).
        """
        bounds = cu_seqlens.tolist()
        lens = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
        if len(lens) != self.batch_size:
            raise ValueError(f"KVCache: prefill of {len(lens)} sequences into a cache of {self.batch_size} rows")
        if any(self.lengths):
            raise ValueError("KVCache: prefill needs empty rows; this cache already holds tokens")
        self._check_room(lens)
        device = self.seqlens.device
        counts = torch.tensor(lens, device=device)
        self._rows = torch.repeat_interleave(torch.arange(len(lens), device=device), counts)  # (total,)
        starts = torch.tensor(bounds[:-1], device=device)
        self._pos = torch.arange(bounds[-1] - bounds[0], device=device) + bounds[0] \
            - torch.repeat_interleave(starts, counts)  # (total,) 0..n_b-1 per sequence
        self._new = lens
        self._attend_len = max(lens) if lens else 0
        self._after = torch.tensor(lens, dtype=self.seqlens.dtype, device=device)

    def begin_decode(self, num_new: int = 1) -> None:
        """`num_new` tokens per row, at positions lengths[b] .. lengths[b] + num_new - 1."""
        self._check_room([num_new] * self.batch_size)
        device = self.seqlens.device
        self._rows = torch.arange(self.batch_size, device=device)[:, None]  # (B, 1)
        self._pos = self.seqlens.long()[:, None] + torch.arange(num_new, device=device)[None, :]  # (B, T)
        self._new = [num_new] * self.batch_size
        self._attend_len = max(self.lengths) + num_new
        self._after = self.seqlens + num_new

    def positions(self) -> torch.Tensor:
        """RoPE positions of the current step's tokens: (total,) in prefill, (B, T) in decode."""
        return self._pos

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store this step's keys/values: (total, Hkv, D) in prefill, (B, T, Hkv, D) in decode."""
        self.k[layer][self._rows, :, self._pos] = k.to(self.k[layer].dtype)
        self.v[layer][self._rows, :, self._pos] = v.to(self.v[layer].dtype)

    def view(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k, v, seqlens_after_step): k/v (B, Hkv, L, D) cut to the longest row after this step."""
        n = self._attend_len
        return self.k[layer][:, :, :n], self.v[layer][:, :, :n], self._after

    def commit(self) -> None:
        """End the step: every row's length grows by the tokens written in it."""
        self.lengths = [n + d for n, d in zip(self.lengths, self._new)]
        self.seqlens = self._after
        self._rows = self._pos = self._new = self._after = None

    # ---- batch management --------------------------------------------------------------------------
    def select(self, rows: Sequence[int]) -> None:
        """Keep only `rows` (in this order), e.g. to drop finished sequences from the decode batch."""
        if list(rows) == list(range(self.batch_size)):
            return
        idx = torch.tensor(list(rows), dtype=torch.long, device=self.seqlens.device)
        self.k = [t.index_select(0, idx) for t in self.k]
        self.v = [t.index_select(0, idx) for t in self.v]
        self.seqlens = self.seqlens.index_select(0, idx)
        self.lengths = [self.lengths[r] for r in rows]

    def _check_room(self, new: Sequence[int]) -> None:
        over = [b for b, (n, d) in enumerate(zip(self.lengths, new)) if n + d > self.max_len]
        if over:
            b = over[0]
            raise ValueError(f"KVCache: row {b} would hold {self.lengths[b] + new[b]} positions but the cache "
                             f"was allocated for {self.max_len}")
