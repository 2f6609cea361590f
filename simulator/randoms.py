"""Random-number sources for the hot path, and a counter-based hash RNG for per-particle secondaries.

Drawing one Gaussian with numpy costs ~11 ns, more than all other per-particle work together, so the
beam-rate path reads pre-drawn pools instead (:class:`PooledRandoms`): a Gaussian is the sum of two pool
values at independent random offsets, scaled by 1/sqrt(2) (exactly Gaussian); Moyal and gamma values come
from one pool each. Every call also redraws a rotating part of each pool, so pools renew continuously.
:class:`ExactRandoms` draws everything directly (tests, rare particles). Both are seeded and deterministic.

:func:`hash_uniform` gives reproducible uniforms per (key, stream) without state: the same particle
always gets the same secondary quantities (SRD, HCAL and VETO sharing), whether it is read out itself or
is a pile-up neighbour of another read-out particle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

SQRT_HALF = np.float32(np.sqrt(0.5))


class Randoms(Protocol):
    """What the physics generator needs; arrays returned are float32 and must not be written to."""

    rng: np.random.Generator

    def normal(self, n: int) -> np.ndarray: ...

    def normal1(self, n: int) -> np.ndarray: ...

    def moyal(self, n: int) -> np.ndarray: ...

    def gamma(self, shape: float, n: int) -> np.ndarray: ...

    def uniform(self, n: int) -> np.ndarray: ...

    def gaps(self, n: int) -> np.ndarray: ...


#: exponential gaps in fixed point: int32 units of 1/GAP_UNIT of the mean gap (integer cumsum is ~5x
#: faster than a float one; 1/4096 of 500 ns is 0.12 ns, far below the 1 ns time stamps)
GAP_UNIT = 4096


def fixed_gaps(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` standard exponentials as int32 multiples of 1/GAP_UNIT (rounded)."""
    e = rng.standard_exponential(n, dtype=np.float32)
    e *= np.float32(GAP_UNIT)
    e += np.float32(0.5)
    return e.astype(np.int32)


def moyal_from_normal(z: np.ndarray) -> np.ndarray:
    """Moyal (Landau approximation, mode 0, unit width) from standard normals: X = -ln(Z^2)."""
    z2 = np.square(z, dtype=np.float64)
    np.maximum(z2, 1e-30, out=z2)
    return (-np.log(z2)).astype(np.float32)


class ExactRandoms:
    """Direct draws from a numpy Generator."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def normal(self, n: int) -> np.ndarray:
        return self.rng.standard_normal(n, dtype=np.float32)

    def normal1(self, n: int) -> np.ndarray:
        return self.rng.standard_normal(n, dtype=np.float32)

    def moyal(self, n: int) -> np.ndarray:
        return moyal_from_normal(self.rng.standard_normal(n))

    def gamma(self, shape: float, n: int) -> np.ndarray:
        return self.rng.standard_gamma(shape, n, dtype=np.float32)

    def uniform(self, n: int) -> np.ndarray:
        return self.rng.random(n, dtype=np.float32)

    def gaps(self, n: int) -> np.ndarray:
        return fixed_gaps(self.rng, n)


class _Pool:
    def __init__(self, values: np.ndarray, draw: Callable[[int], np.ndarray]) -> None:
        self.values = values
        self.draw = draw  # callable(n) -> float32 array of fresh values
        self.cursor = 0
        self.debt = 0.0  # values due for renewal, redrawn in chunks of REFRESH_CHUNK


#: pools are renewed in chunks of at least this many values (fewer, larger draws: the per-call overhead
#: of numpy dominated the renewal of small pieces)
REFRESH_CHUNK = 1 << 14


class PooledRandoms:
    """Pre-drawn pools read at random offsets; ``renew`` x n values are redrawn per use (default 1/32),
    in chunks of :data:`REFRESH_CHUNK`."""

    def __init__(self, rng: np.random.Generator, size: int = 1 << 22, renew: float = 1 / 32) -> None:
        self.rng = rng
        self.size = int(size)
        self.renew = renew
        self._pools: dict[object, _Pool] = {}
        self._normal = self._pool("normal", lambda n: rng.standard_normal(n, dtype=np.float32))

    def _pool(self, key: object, draw: Callable[[int], np.ndarray]) -> _Pool:
        pool = self._pools.get(key)
        if pool is None:
            pool = _Pool(draw(self.size), draw)
            self._pools[key] = pool
        return pool

    def _take(self, pool: _Pool, n: int) -> np.ndarray:
        if n > self.size // 2:
            return pool.draw(n)
        pool.debt += n * self.renew
        if pool.debt >= min(REFRESH_CHUNK, self.size // 4):
            self._refresh(pool, int(pool.debt))
            pool.debt = 0.0
        o = int(self.rng.integers(0, self.size - n))
        view = pool.values[o : o + n]
        return view

    def _refresh(self, pool: _Pool, k: int) -> None:
        while k > 0:
            c = pool.cursor
            m = min(k, self.size - c)
            pool.values[c : c + m] = pool.draw(m)
            pool.cursor = (c + m) % self.size
            k -= m

    def custom(self, key: object, draw: Callable[[int], np.ndarray], n: int) -> np.ndarray:
        """``n`` values of a custom distribution ``draw(k) -> float32 array``, pooled under ``key``
        (single random offset per call; the pool renews like the others). Read-only view."""
        return self._take(self._pool(key, draw), n)

    def normal(self, n: int) -> np.ndarray:
        a = self._take(self._normal, n)
        b = self._take(self._normal, n)
        out = np.add(a, b)
        out *= SQRT_HALF
        return out

    def normal1(self, n: int) -> np.ndarray:
        """Standard normals from ONE pool offset (cheaper; read-only view, consume before the next call)."""
        return self._take(self._normal, n)

    def moyal(self, n: int) -> np.ndarray:
        rng = self.rng
        pool = self._pool("moyal", lambda k: moyal_from_normal(rng.standard_normal(k)))
        return self._take(pool, n)

    def gamma(self, shape: float, n: int) -> np.ndarray:
        rng = self.rng
        pool = self._pool(("gamma", float(shape)), lambda k: rng.standard_gamma(shape, k, dtype=np.float32))
        return self._take(pool, n)

    def uniform(self, n: int) -> np.ndarray:
        return self.rng.random(n, dtype=np.float32)

    def gaps(self, n: int) -> np.ndarray:
        """Exponential arrival gaps (int32 fixed point, see :data:`GAP_UNIT`), one pool offset."""
        rng = self.rng
        return self._take(self._pool("gaps", lambda k: fixed_gaps(rng, k)), n)


# ---------------------------------------------------------------- counter-based hash RNG
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def particle_keys(seed: int, spill: int, slice_id: int, index: np.ndarray) -> np.ndarray:
    """A 64-bit key per particle from (seed, spill, slice, index in slice)."""
    base = splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    base = splitmix64(base ^ np.uint64(((spill & 0xFFFFFF) << 32) | (slice_id & 0xFFFFFFFF)))
    return splitmix64(base ^ np.asarray(index, dtype=np.uint64))


def hash_uniform(keys: np.ndarray, stream: int, shape: tuple[int, ...] = (), first: int = 0) -> np.ndarray:
    """Uniforms in (0, 1), float64, shape ``keys.shape + shape``, a pure function of (key, stream, position);
    ``first`` skips the first positions (the columns ``first:`` of a wider call, same values)."""
    n_extra = int(np.prod(shape)) if shape else 1
    k = np.asarray(keys, dtype=np.uint64).reshape(-1, 1)
    pos = np.arange(first, first + n_extra, dtype=np.uint64).reshape(1, -1) + np.uint64(stream << 16)
    z = splitmix64(k ^ splitmix64(pos))
    u = ((z >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))
    return u.reshape(np.asarray(keys).shape + tuple(shape))


def hash_normal(keys: np.ndarray, stream: int, shape: tuple[int, ...] = ()) -> np.ndarray:
    """Standard normals (Box-Muller) from :func:`hash_uniform` streams ``stream`` and ``stream + 1``."""
    u1 = hash_uniform(keys, stream, shape)
    u2 = hash_uniform(keys, stream + 1, shape)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def hash_gamma3(keys: np.ndarray, stream: int, shape_k: float, size: tuple[int, ...] = ()) -> np.ndarray:
    """Gamma(k) variates via the Wilson-Hilferty cube approximation (good for k >= 1), >= 0."""
    z = hash_normal(keys, stream, size)
    c = 1.0 / (9.0 * shape_k)
    v = 1.0 - c + z * np.sqrt(c)
    return shape_k * np.clip(v, 0.0, None) ** 3
