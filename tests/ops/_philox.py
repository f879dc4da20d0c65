"""kbm's dropout stream in NumPy: an oracle independent of the TensorFlow
reference (cc/common/philox.h describes the stream)."""

import numpy as np

_M0, _M1, _W0, _W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
_LOW = np.uint64(0xFFFFFFFF)


def keep_mask(seed, flat, rate):
    """Whether each flat index in `flat` survives dropout at `rate`: draw
    `f % 4` of Philox4x32-10 with key `seed[0]` and counter
    `(f // 4, seed[1])` is at least `float32(rate) * 2**32`."""
    s0, s1 = (int(s) % 2**64 for s in seed)
    flat = np.asarray(flat, np.uint64)
    g = flat >> np.uint64(2)
    c = [g & _LOW, g >> np.uint64(32)]
    c += [np.full_like(g, s1 & 0xFFFFFFFF), np.full_like(g, s1 >> 32)]
    k0, k1 = s0 & 0xFFFFFFFF, s0 >> 32
    for _ in range(10):
        p0, p1 = c[0] * np.uint64(_M0), c[2] * np.uint64(_M1)
        c = [
            (p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0),
            p1 & _LOW,
            (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1),
            p0 & _LOW,
        ]
        k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
    draws = np.choose((flat & np.uint64(3)).astype(np.int64), c)
    threshold = min(int(float(np.float32(rate)) * 2**32), 0xFFFFFFFF)
    return draws >= np.uint64(threshold)
