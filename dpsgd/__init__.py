"""dpsgd: hierarchical asynchronous SGD.

MPI ranks are asynchronous workers around a parameter server that applies a
delay-compensated update (DC-ASGD); inside each rank, threads update the rank's parameters
lock-free (Hogwild). See :mod:`dpsgd.plugin` for the algorithm interface.
"""

import os as _os

# A thread-safe Numba threading layer (omp or tbb) for any parallel=True code: the default
# 'workqueue' layer aborts the process when two Python threads enter parallel code at once.
_os.environ.setdefault("NUMBA_THREADING_LAYER", "threadsafe")

__version__ = "0.1.0"

from .config import ConfigError, TrainConfig  # noqa: E402
from .plugin import Algorithm, ThreadContext  # noqa: E402
from .rules import RULES, RuleConfig, UpdateRule  # noqa: E402
from .runner import TrainResult, train  # noqa: E402
from .transport import SparseBlocks  # noqa: E402

__all__ = ["Algorithm", "ConfigError", "RULES", "RuleConfig", "SparseBlocks", "ThreadContext", "TrainConfig",
           "TrainResult", "UpdateRule", "train", "__version__"]
