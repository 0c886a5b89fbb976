"""The A3C baseline (Mnih et al. 2016) sharing HSA2C's networks and losses: ``from algorithms.a3c import A3C``."""


def __getattr__(name):
    if name == "A3C":
        from .a3c import A3C

        return A3C
    raise AttributeError(name)


__all__ = ["A3C"]
