#!/usr/bin/env python
"""Corpus readers at the scale users bring: lines (non-zeros) per second and peak memory.

The corpus is the synthetic one of ``benchmarks/scaling.py`` (``--docs`` documents drawn from the
LDA model, V = ``--words``, ~240 distinct words a document; built once into ``--cache``), also
written once as a UCI bag-of-words file (``docword.<name>.txt.gz`` + ``vocab.<name>.txt``, the
format of the NYTimes and PubMed corpora) and as plain text. Each reader runs ``--reps`` times,
interleaved, in a fresh process (so its peak RSS is its own: ``VmHWM``); tables give medians:

- ``read_uci`` of the gzipped and of the plain file (the Numba fast path of
  ``algorithms/dpsvi/uci_parse.py``), and its general path - one Python ``split`` per line, what
  every line went through before the fast path - on the first ``--general-docs`` documents
  (the whole file would take minutes);
- ``read_npz`` of the scipy ``.npz`` (the whole matrix);
- ``NpzRows.read_groups`` (one process: held-out and training documents, in one pass; under
  mpiexec rank 0 reads every rank's documents with it and sends them).

    python -m benchmarks.readers --docs 100000 --reps 3

Outputs: ``benchmarks/results/readers.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from benchmarks.stats import med

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
MARK = "@@readers "

#: (name, what it reads, the reader's call in the child)
READERS = [
    ("read_uci, gzip", "uci_gz", "C.read_uci(path)"),
    ("read_uci, plain text", "uci_txt", "C.read_uci(path)"),
    ("read_uci general path (per-line split), gzip", "uci_small", "general(path)"),
    ("read_npz (whole matrix)", "npz", "C.read_npz(path)"),
    ("NpzRows.read_groups (held-out + training)", "npz",
     "R.NpzRows.read_groups(path, lambda n: (np.arange(0, n, 10), np.setdiff1d(np.arange(n), np.arange(0, n, 10))))"),
]

CHILD = r"""
import json, sys, time
import numpy as np
from algorithms.dpsvi import corpus as C, npz_rows as R, uci_parse as U
from dpsgd.runner import peak_rss_mb

def general(path):
    U.parse_triples = lambda buf, out: (0, 0, 0)  # the fast path declines every block
    return C.read_uci(path)

path = sys.argv[1]
before = peak_rss_mb()
t = time.perf_counter()
out = {CALL}
seconds = time.perf_counter() - t
print("MARK" + json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before}), flush=True)
"""


def ensure_files(a) -> dict:
    """Paths of the corpus in each format (written once into the cache)."""
    from benchmarks.scaling import ensure_corpus

    ensure_corpus(a)  # a.corpus_path
    stem = os.path.basename(a.corpus_path)[:-4]
    paths = {"npz": a.corpus_path}
    vocab = a.corpus_path[:-4] + ".vocab.txt"
    for key, name, n_docs in (("uci_gz", f"docword.{stem}.txt.gz", None), ("uci_txt", f"docword.{stem}.txt", None),
                              ("uci_small", f"docword.{stem}_first{a.general_docs}.txt.gz", a.general_docs)):
        p = os.path.join(a.cache, name)
        paths[key] = p
        v = os.path.join(a.cache, name.replace("docword", "vocab", 1).removesuffix(".gz"))
        if not os.path.exists(v):
            os.symlink(os.path.basename(vocab), v)
        if not os.path.exists(p):
            _write_uci(a.corpus_path, p, n_docs)
    return paths


def _write_uci(npz: str, path: str, n_docs: int | None) -> None:
    import scipy.sparse as sp

    t = time.perf_counter()
    X = sp.load_npz(npz).tocsr()
    if n_docs is not None:
        X = X[:n_docs]
    tmp = path + ".tmp"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(tmp, "wt") as f:
        f.write(f"{X.shape[0]}\n{X.shape[1]}\n{X.nnz}\n")
        step = 5000
        for lo in range(0, X.shape[0], step):
            B = X[lo:lo + step].tocoo()
            rows = np.column_stack([B.row + lo + 1, B.col + 1, B.data.astype(np.int64)])
            f.write("\n".join(" ".join(map(str, r)) for r in rows.tolist()) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path} ({X.nnz} lines) in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)


def run_child(call: str, path: str) -> dict:
    code = CHILD.replace("{CALL}", call).replace("MARK", MARK)
    r = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    for line in r.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    return {"error": (r.stderr or r.stdout).strip().splitlines()[-1:]}


def nnz_of(path: str) -> int:
    """The non-zeros (UCI lines) of a corpus file, from its header or its indptr."""
    if path.endswith(".npz"):
        import zipfile

        with zipfile.ZipFile(path) as zf, zf.open("indptr.npy") as f:
            return int(np.lib.format.read_array(f)[-1])
    with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
        return int([f.readline() for _ in range(3)][2])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--words", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--general-docs", type=int, default=10_000)
    ap.add_argument("--cache", default=os.path.join(ROOT, "runs", "scaling"))
    ap.add_argument("--results-dir", default=RESULTS)
    a = ap.parse_args(argv)
    paths = ensure_files(a)
    start = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    runs: dict[str, list] = {name: [] for name, _, _ in READERS}
    for rep in range(a.reps):
        for name, key, call in READERS:
            r = run_child(call, paths[key])
            runs[name].append(r)
            print(f"  rep {rep} {name}: " + (f"{r['seconds']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB"
                                             if "error" not in r else f"error {r['error']}"), file=sys.stderr, flush=True)
    end = time.strftime("%H:%M", time.gmtime())
    rows = []
    for name, key, _ in READERS:
        ok = [r for r in runs[name] if "error" not in r]
        if not ok:
            continue
        n = nnz_of(paths[key])
        s = med([r["seconds"] for r in ok])
        rows.append({"reader": name, "file": os.path.basename(paths[key]), "file_mb": os.path.getsize(paths[key]) / 1e6,
                     "lines": n, "seconds": s, "lines_per_s": n / s, "seconds_all": [r["seconds"] for r in ok],
                     "peak_rss_mb": med([r["peak_rss_mb"] for r in ok]),
                     "runtime_mb": med([r["rss_before_mb"] for r in ok])})
    lines = [f"Corpus readers, synthetic corpus of {a.docs:,} documents (V {a.words:,}); medians of {a.reps} "
             f"interleaved runs, each in a fresh process; {start}-{end} UTC, {platform.node()}, "
             f"{os.cpu_count()} cores; command: `python -m benchmarks.readers --docs {a.docs} --reps {a.reps}`. "
             "lines = non-zeros (document, word) pairs; peak RSS includes the interpreter and imports "
             "(the 'runtime' column, before reading).", "",
             "| reader | file (MB) | lines | seconds (runs) | M lines/s | peak RSS MB (runtime) |",
             "|---|---|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['reader']} | {r['file']} ({r['file_mb']:.0f}) | {r['lines']:,} | {r['seconds']:.2f} "
                     f"({', '.join(f'{x:.2f}' for x in r['seconds_all'])}) | {r['lines_per_s'] / 1e6:.2f} | "
                     f"{r['peak_rss_mb']:,.0f} ({r['runtime_mb']:.0f}) |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(a.results_dir, exist_ok=True)
    base = os.path.join(a.results_dir, "readers")
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".json", "w") as f:
        json.dump({"date": start, "end": end, "docs": a.docs, "words": a.words, "reps": a.reps, "rows": rows}, f, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.barh([r["reader"] for r in rows][::-1], [r["lines_per_s"] / 1e6 for r in rows][::-1])
        ax.set_xlabel("million lines (non-zeros) per second")
        ax.set_title(f"corpus readers, {a.docs // 1000}k documents (medians of {a.reps})")
        fig.tight_layout()
        fig.savefig(base + ".png", dpi=110)
    except ImportError:
        print("(matplotlib missing: no PNG)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
