"""Atomic ``.npz`` checkpoints with a checksum; no pickle.

Each server shard writes ``DIR/shard{s}.npz``: its parameters, the rule's per-worker
backups and MeanSquares, momentum, staleness histogram, and a JSON ``meta`` record (step,
elapsed time, config, random seed, the SHA-256 of every array). A write goes to a temporary
file in the same directory, is flushed to disk, and replaces the old file by ``os.replace``;
the previous checkpoint is kept as ``shard{s}.prev.npz``. Loading verifies the checksum
and refuses a truncated, corrupted or mismatched file with a message that names it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "dpsgd-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, truncated, corrupted, mismatched)."""


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(memoryview(a).cast("B") if a.size else b"")  # the array's bytes, not a copy of them
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: the mode of every file written here: 0644 under the usual umask 022, like any other tool's output
#: (mkstemp's temp files are 0600, which a shared cluster's group could not read)
FILE_MODE = 0o666 & ~_umask()


def _mkstemp(d: str, suffix: str):
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=suffix)
    os.fchmod(fd, FILE_MODE)
    return fd, tmp


def atomic_write_bytes(path: str, write) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path`` and rename it into place."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = _mkstemp(d, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def save_npz(path: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write arrays + JSON meta (with their checksum) atomically; keep the previous file."""
    meta = dict(meta, format=FORMAT, sha256=_digest(arrays))
    payload = dict(arrays)
    payload["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
    prev = path[:-4] + ".prev.npz" if path.endswith(".npz") else path + ".prev"
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = _mkstemp(d, ".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        # the new file is complete on disk before the old one becomes .prev
        if os.path.exists(path):
            os.replace(path, prev)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_npz(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """Read and verify a file written by :func:`save_npz`. Raises CheckpointError."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: truncated or corrupted checkpoint ({type(e).__name__}: {e})") from None
    raw = arrays.pop("__meta__", None)
    if raw is None:
        raise CheckpointError(f"{path}: not a dpsgd checkpoint (no metadata)")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: corrupted checkpoint metadata") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    if _digest(arrays) != meta.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch, the checkpoint is corrupted")
    return arrays, meta


def shard_path(directory: str, shard: int) -> str:
    return os.path.join(directory, f"shard{shard}.npz")


def load_latest(directory: str, shard: int, warn=print) -> tuple[dict[str, np.ndarray], dict]:
    """The newest valid checkpoint of a shard; falls back to the previous one with a warning."""
    path = shard_path(directory, shard)
    try:
        return load_npz(path)
    except CheckpointError as first:
        prev = path[:-4] + ".prev.npz"
        if not os.path.exists(prev):
            raise
        arrays, meta = load_npz(prev)
        warn(f"warning: {first}; refusing it and resuming from the previous checkpoint {prev}")
        return arrays, meta
