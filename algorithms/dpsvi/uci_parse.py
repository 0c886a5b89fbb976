"""The UCI bag-of-words reader's fast path: ``docID wordID count`` lines parsed from raw bytes.

A Numba loop over the bytes of whole lines instead of ``bytes.split`` and one Python int per
field. It accepts only the plain form - three unsigned decimal integers of at most 18 digits
separated by spaces or tabs, optional ``\\r`` - and reports the first line it does not accept;
the reader then parses that block with the general (slow) path, which also writes the error
messages, so every input gives exactly the result and the message it gave before.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def parse_triples(buf, out):
    """Parse the lines in ``buf`` (uint8) into ``out`` (int64, rows x 3).

    Returns ``(rows, lines, bad)``: the triples written, the lines seen (blank ones included; a
    last line without a newline counts), and the 0-based index of the first line the fast path
    does not accept (-1 when it accepted them all; ``rows`` and ``lines`` then stop before it).
    """
    n = buf.shape[0]
    i = 0
    row = 0
    line = 0
    while i < n:
        k = 0
        v0 = 0
        v1 = 0
        v2 = 0
        while True:
            while i < n and (buf[i] == 32 or buf[i] == 9 or buf[i] == 13):
                i += 1
            if i >= n or buf[i] == 10:
                break
            c = buf[i]
            if c < 48 or c > 57 or k == 3:
                return row, line, line
            v = 0
            digits = 0
            while i < n and buf[i] >= 48 and buf[i] <= 57:
                v = v * 10 + (buf[i] - 48)
                digits += 1
                i += 1
            if digits > 18:
                return row, line, line
            if i < n and not (buf[i] == 32 or buf[i] == 9 or buf[i] == 13 or buf[i] == 10):
                return row, line, line
            if k == 0:
                v0 = v
            elif k == 1:
                v1 = v
            else:
                v2 = v
            k += 1
        if k == 3:
            if row >= out.shape[0]:
                return row, line, line
            out[row, 0] = v0
            out[row, 1] = v1
            out[row, 2] = v2
            row += 1
        elif k != 0:
            return row, line, line
        line += 1
        i += 1  # the newline
    return row, line, -1
