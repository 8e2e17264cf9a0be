"""Block tiles of the tensor-core GEMM (mma.py) and the rule that picks one per GEMM shape.

A block of warps_m x warps_n warps computes a block_m x block_n tile of C; each warp owns a
(block_m / warps_m) x (block_n / warps_n) tile made of 16x16 mma tiles, and the block streams
K through shared memory k_tile at a time, `stages` tiles in flight (cp.async). N and K must be
whole tiles for dense layers (weights' dimensions: 384, 1152, 1536 in DeiT-S); M (batch x
tokens, or tokens per head in attention) is padded to the tile and the padded rows are never
stored, and so is attention's N (tokens: q @ k^T's columns).
"""

from __future__ import annotations

from dataclasses import dataclass

from .mma_intrin import TILE_K, TILE_M, TILE_N


@dataclass(frozen=True)
class MmaTile:
    """One block tile of the tensor-core GEMM."""

    block_m: int
    block_n: int
    warps_m: int
    warps_n: int
    k_tile: int = 64
    stages: int = 2

    def __post_init__(self):
        if self.block_m % (self.warps_m * TILE_M) or self.block_n % (self.warps_n * TILE_N):
            raise ValueError(f"{self}: each warp's tile must be whole 16x16 mma tiles")
        if self.k_tile % TILE_K:
            raise ValueError(f"{self}: k_tile must be a multiple of {TILE_K}")
        if self.stages < 1:
            raise ValueError(f"{self}: stages must be >= 1")

    @property
    def warps(self) -> int:
        return self.warps_m * self.warps_n

    @property
    def warp_m(self) -> int:
        return self.block_m // self.warps_m

    @property
    def warp_n(self) -> int:
        return self.block_n // self.warps_n

    @property
    def shared_bytes(self) -> int:
        """Shared memory of the A and B stages, rows padded by 16 bytes (storage_align)."""
        return self.stages * (self.block_m + self.block_n) * (self.k_tile + 16)

    @property
    def name(self) -> str:
        return f"{self.block_m}x{self.block_n}x{self.k_tile}/{self.warps}w/{self.stages}s"


# Largest first: the first fitting tile is taken unless padding M (or attention's N) wastes
# 1/8 of it or more (see choose_tile). k_tile 32 variants serve head_dim 32 (Swin-T's q @ k^T)
# and attention's ragged K = tokens.
# Warp tiles of at most 64x32 (8 mma tiles, 64 int32 accumulators a lane): a 64x64 warp tile
# spills registers at K = 1536 (measured with ptxas for sm_80).
TILE_TABLE: tuple[MmaTile, ...] = (
    MmaTile(128, 128, 2, 4),
    MmaTile(128, 64, 2, 2),
    MmaTile(64, 64, 2, 2),
    MmaTile(64, 64, 2, 2, k_tile=32),
    MmaTile(64, 32, 2, 1),
    MmaTile(32, 64, 1, 2, k_tile=32),  # probs @ V at head_dim 64: one N tile, so a row
    MmaTile(32, 32, 1, 1, k_tile=32),  # prologue (Shiftmax, prologue.py) runs once per row
)
STATIC_SHARED_LIMIT = 48 * 1024  # bytes of static shared memory per block on sm_80..sm_90


def padded(extent: int, block: int) -> int:
    """`extent` rounded up to whole blocks."""
    return -(-extent // block) * block


def choose_tile(m: int | None, n: int, k: int, table=TILE_TABLE, ragged_n: bool = False,
                ragged_k: bool = False) -> MmaTile | None:
    """The tile for an (M, N, K) GEMM (M None: symbolic), or None if no tile fits.

    N must be whole block_n tiles and K whole k tiles unless `ragged_n` / `ragged_k`
    (attention: N = tokens in q @ k^T, K = tokens in probs @ V; B's padded rows are clamped or
    zero-filled and C's padded columns never stored, like M's). Tiles are ranked by the share
    of their work spent on padding (1 - M N K / (M' N' K'), a symbolic M counting as whole
    tiles): among tiles wasting under 1/8, the largest; else the least wasteful (ties: the
    larger).
    """
    fitting = [t for t in table if (ragged_n or n % t.block_n == 0)
               and (ragged_k or k % t.k_tile == 0) and t.shared_bytes <= STATIC_SHARED_LIMIT]
    if not fitting:
        return None

    def waste(tile: MmaTile) -> float:
        used_m = 1.0 if m is None else m / padded(m, tile.block_m)
        return 1.0 - used_m * n / padded(n, tile.block_n) * k / padded(k, tile.k_tile)

    good = [t for t in fitting if waste(t) < 0.125]
    return good[0] if good else min(fitting, key=waste)
