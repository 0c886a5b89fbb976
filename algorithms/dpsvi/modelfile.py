"""DPSVI's model file (``model.npz`` of ``dpsgd lda``, :meth:`.model.DPSVI.save`): no pickles.

Members: ``components`` (K x V float32 topic-word matrix, lambda), ``meta_json`` (the estimator's
class, constructor parameters and fitted scalars as JSON) and, when given, ``vocab_utf8`` (the
words, newline-separated). Written to a temporary file and renamed. Plain numpy, so the command
line writes it without importing scikit-learn.
"""

from __future__ import annotations

import json
import os

import numpy as np


def jsonable(d: dict) -> dict:
    """``d`` with numpy scalars as Python numbers and anything else not JSON-able as its repr."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.integer,)):
            v = int(v)
        elif isinstance(v, (np.floating,)):
            v = float(v)
        elif not isinstance(v, (int, float, str, bool, type(None), list, dict)):
            v = repr(v)
        out[k] = v
    return out


def make_meta(params: dict, *, doc_topic_prior_: float, topic_word_prior_: float, n_batch_iter_: int,
              n_iter_, n_features_in_: int, extra: dict | None = None, cls: str = "DPSVI") -> dict:
    """The JSON metadata: ``params`` are constructor parameters (missing ones load as defaults)."""
    meta = {"class": cls, "params": jsonable(params), "doc_topic_prior_": float(doc_topic_prior_),
            "topic_word_prior_": float(topic_word_prior_), "n_batch_iter_": int(n_batch_iter_),
            "n_iter_": n_iter_, "n_features_in_": int(n_features_in_)}
    if extra:
        meta["extra"] = jsonable(extra)
    return meta


def write(path, components, meta: dict, vocabulary=None) -> None:
    from dpsgd.checkpoint import atomic_write_bytes

    components = np.asarray(components, np.float32)
    arrays = {"components": components, "meta_json": np.array(json.dumps(meta))}
    if vocabulary is not None:
        vocabulary = [str(v) for v in vocabulary]
        if len(vocabulary) != components.shape[1]:
            raise ValueError(f"vocabulary has {len(vocabulary)} words, the model {components.shape[1]}")
        arrays["vocab_utf8"] = np.frombuffer("\n".join(vocabulary).encode("utf-8"), np.uint8)
    atomic_write_bytes(os.fspath(path), lambda f: np.savez(f, **arrays))


def read(path):
    """(components, meta, vocabulary or None) of a model file; ValueError when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            comp = z["components"]
            meta = json.loads(str(z["meta_json"]))
            vocab = bytes(z["vocab_utf8"]).decode("utf-8").split("\n") if "vocab_utf8" in z.files else None
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a DPSVI model file ({e})") from None
    return comp, meta, vocab
