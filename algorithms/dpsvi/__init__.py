"""DPSVI: LDA topic models by distributed, lock-free stochastic variational inference.

``from algorithms.dpsvi import DPSVI`` gives the scikit-learn-compatible estimator. The package
imports lazily, so ``algorithms.dpsvi.cli`` (loaded by ``dpsgd --help``) stays light.
"""

__all__ = ["DPSVI", "SVIAlgorithm", "load_corpus", "CorpusError"]


def __getattr__(name):
    if name == "DPSVI":
        from . import model

        return model.DPSVI
    if name == "SVIAlgorithm":
        from . import svi

        return svi.SVIAlgorithm
    if name in ("load_corpus", "CorpusError"):
        from . import corpus

        return getattr(corpus, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
