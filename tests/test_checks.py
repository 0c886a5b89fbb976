"""dpsgd.checks.check_number: the one validator of the framework's and the algorithms' hyperparameters."""

import math

import numpy as np
import pytest

from dpsgd.checks import ConfigError, check_number


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -math.inf, True, "1", None, [1]])
def test_non_numbers_and_non_finite_values_fail(value):
    with pytest.raises(ConfigError, match=r"^x must be a finite number, got "):
        check_number("x", value)


def test_bounds_and_messages():
    assert check_number("lr", 0.5, lo=0, lo_open=True) == 0.5
    with pytest.raises(ConfigError, match=r"^lr must be a positive finite number, got 0$"):
        check_number("lr", 0, lo=0, lo_open=True)
    with pytest.raises(ConfigError, match=r"^gamma must be a finite number in \(0, 1\], got 1.5$"):
        check_number("gamma", 1.5, lo=0, hi=1, lo_open=True)
    assert check_number("gamma", 1, lo=0, hi=1, lo_open=True) == 1
    with pytest.raises(ConfigError, match=r"must be a finite number in \[0, 1\), got 1.0"):
        check_number("alpha", 1.0, lo=0, hi=1, hi_open=True)
    with pytest.raises(ConfigError, match=r"must be a finite number <= 3"):
        check_number("c", 4, hi=3)
    with pytest.raises(ValueError, match=r"^Est: k must be an integer >= 2, got 1$"):
        check_number("k", 1, lo=2, integer=True, error=ValueError, prefix="Est: ")


def test_integers_by_value_or_by_type():
    assert check_number("n", 2.0, lo=0, lo_open=True, integer=True) == 2.0  # an integral value
    assert check_number("n", np.int64(3), lo=0, lo_open=True, int_type=True) == 3
    with pytest.raises(ConfigError, match="n must be a positive integer, got 2.0"):
        check_number("n", 2.0, lo=0, lo_open=True, int_type=True)
    with pytest.raises(ConfigError, match="n must be a positive integer, got 2.5"):
        check_number("n", 2.5, lo=0, lo_open=True, integer=True)
    with pytest.raises(ConfigError, match="positive integer, got True"):
        check_number("n", True, lo=0, lo_open=True, int_type=True)  # bool is not a count


def test_none_only_when_allowed():
    assert check_number("t", None, lo=0, none_ok=True) is None
    with pytest.raises(ConfigError):
        check_number("t", None, lo=0)
