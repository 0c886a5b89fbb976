"""The one validator of hyperparameters (framework and algorithms) and the error it reports."""

from __future__ import annotations

import math
import numbers


class ConfigError(ValueError):
    """An invalid configuration: reported as one line, exit code 2."""


def check_number(name: str, value, *, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False,
                 integer: bool = False, int_type: bool = False, none_ok: bool = False, error=ConfigError,
                 prefix: str = ""):
    """``value`` when it is a finite number in the range, else ``error`` with one line
    "<prefix><name> must be <what>, got <value>" - the one validator of the framework's and the
    algorithms' hyperparameters.

    ``integer``: an integral value (``2.0`` passes); ``int_type``: an ``int``/numpy integer (``2.0``
    does not). ``lo``/``hi``: bounds, closed unless ``lo_open``/``hi_open``. bool never passes.
    """
    if value is None and none_ok:
        return value
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and int_type:
        ok = isinstance(value, numbers.Integral)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        whole = integer or int_type
        if lo == 0 and lo_open and hi is None:
            what = "a positive integer" if whole else "a positive finite number"
        else:
            what = "an integer" if whole else "a finite number"
            if lo is not None and hi is not None:
                what += f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            elif lo is not None:
                what += f" {'>' if lo_open else '>='} {lo}"
            elif hi is not None:
                what += f" {'<' if hi_open else '<='} {hi}"
        raise error(f"{prefix}{name} must be {what}, got {value!r}")
    return value
