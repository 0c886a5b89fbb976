"""HSA2C: hierarchical asynchronous advantage actor-critic on dpsgd.

``from algorithms.hsa2c import HSA2C``; ``dpsgd a2c --env CartPole-v1 --out DIR`` on the command line.
"""


def __getattr__(name):  # lazy: `dpsgd --help` imports the cli module only
    if name == "HSA2C":
        from .agent import HSA2C

        return HSA2C
    raise AttributeError(name)


__all__ = ["HSA2C"]
