"""Fletcher-4, the checksum of a send stream (ZFS's zio_checksum fletcher_4).

Theory of operation
-------------------
Fletcher-4 runs four 64-bit accumulators over the data taken as little-endian 32-bit words:
for every word w, a += w; b += a; c += b; d += c (all mod 2**64). A stream's checksum runs
over the whole stream, record after record, so the state is kept between calls (`update`).

A word-by-word loop in Python would cost a second per 10 MiB. Instead, for n words w_0..w_{n-1}
and a starting state (a, b, c, d), the state after them is, with t = n - i:

    a' = a + sum(w_i)
    b' = b + n a + sum(t w_i)
    c' = c + n b + C(n+1, 2) a + sum(C(t+1, 2) w_i)
    d' = d + n c + C(n+1, 2) b + C(n+2, 3) a + sum(C(t+2, 3) w_i)

and those weighted sums are polynomials in i, so they follow from the four moments
M_k = sum(i**k w_i), k = 0..3. The moments are computed with big-integer arithmetic, which runs
in C: the words are laid out as a matrix of ROWS x COLS (i = r COLS + j); each row is read as
one integer (int.from_bytes), and two masks split it into the even and the odd words, each in a
64-bit slot of an integer of its own. Fletcher-4 itself is then run over the rows, on those
integers: a += x; b += a; c += b; d += c, four big-integer additions per row and half, every
slot (column) accumulating by itself. After R rows, slot j holds sum x_rj, sum (R-r) x_rj,
sum C(R-r+1, 2) x_rj and sum C(R-r+2, 3) x_rj, from which the column moments sum_r r**a x_rj
follow by a change of polynomial basis, and a short dot product with j**b finishes. Python-level
work is O(ROWS + COLS) per chunk instead of O(n). Slots never overflow: the largest,
sum_r C(R-r+2, 3) x_rj, is below C(R+3, 4) 2**32 < 2**64 for R <= 512.
"""
from __future__ import annotations

import struct
from math import comb
from operator import mul

MASK = (1 << 64) - 1
COLS = 512                       # words per row
ROWS = 512                       # rows per chunk: a chunk is 1 MiB
SMALL = 256                      # words: data up to 1 KiB is summed directly (Fletcher4._small)


class _Shape:
    """What the chunk method needs for rows of `cols` words: j**b, the mask of the even words
    and the bytes of a slot integer. Fewer columns for less data keep the O(cols) work in
    proportion (rows and columns about balanced)."""

    def __init__(self, cols: int) -> None:
        self.cols = cols
        self.pow_j = [[j ** b for j in range(cols)] for b in range(4)]
        self.even = int.from_bytes(b"\xff\xff\xff\xff\x00\x00\x00\x00" * (cols // 2), "little")
        self.half = 8 * (cols // 2)


_SHAPES = {c: _Shape(c) for c in (16, 32, 64, 128, 256, 512)}


def _shape_for(n: int) -> _Shape:
    cols = 16
    while cols < COLS and cols * cols < n:
        cols *= 2
    return _SHAPES[cols]
_DESC = [[t for t in range(SMALL, 0, -1)], [comb(t + 1, 2) for t in range(SMALL, 0, -1)],
         [comb(t + 2, 3) for t in range(SMALL, 0, -1)]]


def _columns(shape: _Shape, even: int, odd: int) -> list[int]:
    """The per-column values of a pair of slot integers (even and odd words)."""
    out = [0] * shape.cols
    out[0::2] = memoryview(even.to_bytes(shape.half, "little")).cast("Q").tolist()
    out[1::2] = memoryview(odd.to_bytes(shape.half, "little")).cast("Q").tolist()
    return out


def _moments(data: memoryview) -> tuple[int, int, int, int, int]:
    """(n, M0, M1, M2, M3) of one chunk of at most ROWS*COLS words (len a multiple of 4)."""
    n = len(data) // 4
    if n == 0:
        return 0, 0, 0, 0, 0
    shape = _shape_for(n)
    rowbytes = 4 * shape.cols
    nrows = -(-n // shape.cols)
    ae = be = ce = de = ao = bo = co = do = 0
    mask, frombytes = shape.even, int.from_bytes
    for r in range(nrows):
        x = frombytes(data[r * rowbytes:(r + 1) * rowbytes], "little")
        e = x & mask
        o = (x >> 32) & mask
        ae += e
        be += ae
        ce += be
        de += ce
        ao += o
        bo += ao
        co += bo
        do += co
    big_r = nrows
    s0, s1 = _columns(shape, ae, ao), _columns(shape, be, bo)  # u = R - r: sum x, sum u x
    s2 = [2 * c - b for c, b in zip(_columns(shape, ce, co), s1)]        # sum u^2 x
    s3 = [6 * d - 3 * x2 - 2 * x1 for d, x2, x1 in zip(_columns(shape, de, do), s2, s1)]
    rr = big_r * big_r
    cols = [s0,                                                          # sum r^a x
            [big_r * a - x1 for a, x1 in zip(s0, s1)],
            [rr * a - 2 * big_r * x1 + x2 for a, x1, x2 in zip(s0, s1, s2)],
            [rr * big_r * a - 3 * rr * x1 + 3 * big_r * x2 - x3
             for a, x1, x2, x3 in zip(s0, s1, s2, s3)]]
    # Q[a][b] = sum_j j**b colmoment_a[j]
    q = [[sum(map(mul, cols[a], shape.pow_j[b])) if a + b <= 3 else 0 for b in range(4)]
         for a in range(4)]
    m = shape.cols
    moments = []
    for k in range(4):
        total = 0
        for a in range(k + 1):
            total += comb(k, a) * m ** a * q[a][k - a]
        moments.append(total)
    return (n, *moments)


class Fletcher4:
    """A running fletcher-4 (native byte order: the words are little-endian)."""

    __slots__ = ("a", "b", "c", "d")

    def __init__(self, state: tuple[int, int, int, int] = (0, 0, 0, 0)) -> None:
        self.a, self.b, self.c, self.d = state

    def copy(self) -> "Fletcher4":
        return Fletcher4(self.state)

    @property
    def state(self) -> tuple[int, int, int, int]:
        return self.a, self.b, self.c, self.d

    def update(self, data) -> None:
        """Run over `data` (its length must be a multiple of 4, as every record's is)."""
        mv = memoryview(data).cast("B")
        if len(mv) % 4:
            raise ValueError("fletcher-4 runs over whole 32-bit words")
        if len(mv) <= 4 * SMALL:
            self._small(mv)
            return
        step = 4 * ROWS * COLS
        for off in range(0, len(mv), step):
            self._chunk(mv[off:off + step])

    def _small(self, mv: memoryview) -> None:
        """A record header or a small payload: the weighted sums of the words directly (four
        C-level dot products), without the chunk's fixed cost of O(COLS) column work."""
        n = len(mv) // 4
        if n == 0:
            return
        words = mv.cast("I")
        cut = SMALL - n
        s0 = sum(words)
        s1 = sum(map(mul, words, _DESC[0][cut:]))          # sum t w, t = n - i
        s2 = sum(map(mul, words, _DESC[1][cut:]))          # sum C(t+1, 2) w
        s3 = sum(map(mul, words, _DESC[2][cut:]))          # sum C(t+2, 3) w
        a, b, c, d = self.a, self.b, self.c, self.d
        self.a = (a + s0) & MASK
        self.b = (b + n * a + s1) & MASK
        self.c = (c + n * b + comb(n + 1, 2) * a + s2) & MASK
        self.d = (d + n * c + comb(n + 1, 2) * b + comb(n + 2, 3) * a + s3) & MASK

    def _chunk(self, chunk: memoryview) -> None:
        n, m0, m1, m2, m3 = _moments(chunk)
        if n == 0:
            return
        a, b, c, d = self.a, self.b, self.c, self.d
        s1 = n * m0 - m1                                     # sum t w
        s2 = n * n * m0 - 2 * n * m1 + m2                    # sum t^2 w
        s3 = n ** 3 * m0 - 3 * n * n * m1 + 3 * n * m2 - m3  # sum t^3 w
        self.a = (a + m0) & MASK
        self.b = (b + n * a + s1) & MASK
        self.c = (c + n * b + comb(n + 1, 2) * a + (s2 + s1) // 2) & MASK
        self.d = (d + n * c + comb(n + 1, 2) * b + comb(n + 2, 3) * a
                  + (s3 + 3 * s2 + 2 * s1) // 6) & MASK


def fletcher4(data, state: tuple[int, int, int, int] = (0, 0, 0, 0)) -> tuple[int, int, int, int]:
    """Fletcher-4 of `data` from `state`."""
    f = Fletcher4(state)
    f.update(data)
    return f.state


def fletcher4_reference(data, state=(0, 0, 0, 0)) -> tuple[int, int, int, int]:
    """Word by word, as ZFS writes it: the slow definition the fast one is tested against."""
    a, b, c, d = state
    for (w,) in struct.iter_unpack("<I", bytes(data)):
        a = (a + w) & MASK
        b = (b + a) & MASK
        c = (c + b) & MASK
        d = (d + c) & MASK
    return a, b, c, d
