"""Build the default LDA corpus: the Python documentation split into sections.

Source: Debian's ``python3-doc`` package (``apt-get install python3-doc``), the HTML manual
of Python 3.11 under /usr/share/doc/python3.11/html, licensed under the PSF License Agreement
(see LICENCE.md next to this script). Every HTML ``<section>`` and every API entry
(``<dl class="py function|class|method|...">``) becomes one document made of the text that
belongs to it directly (not to a nested section or entry); sections with fewer than 30
words are dropped. The text is tokenised by scikit-learn's CountVectorizer
(stop_words='english', min_df=5, max_df=0.5).

Output (``pydoc.npz``, read by ``algorithms.dpsvi.corpus.load_corpus``): the compact layout
``dpsvi-compact-v1`` -- per-document lengths, per-document sorted word ids stored as uint16
deltas, uint16 counts, and the vocabulary as UTF-8 text -- compressed with numpy's
``savez_compressed``; no pickles.

    python benchmarks/data/build_pydoc_corpus.py [--html DIR] [--out benchmarks/data/pydoc.npz]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from html.parser import HTMLParser

import numpy as np

DEFAULT_HTML = "/usr/share/doc/python3.11/html"
MIN_WORDS = 30


class SectionSplitter(HTMLParser):
    """Collects the direct text of every <section> and of every API entry (``<dl class="py ...">``:
a function, class, method...); text of nested ones goes to them."""

    SKIP = {"script", "style"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[list[str]] = []
        self.done: list[str] = []
        self.skip = 0
        self.containers: list[bool] = []  # open <dl>: is it an API entry (a document)?

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self.stack.append([])
        elif tag == "dl":
            entry = (dict(attrs).get("class") or "").startswith("py ")
            self.containers.append(entry)
            if entry:
                self.stack.append([])
        elif tag in self.SKIP:
            self.skip += 1
        elif tag == "a" and ("class", "headerlink") in attrs:
            self.skip += 1  # the pilcrow of a heading

    def handle_endtag(self, tag):
        if tag == "section" or (tag == "dl" and self.containers and self.containers.pop()):
            if self.stack:
                self.done.append(" ".join(self.stack.pop()))
        elif tag in self.SKIP and self.skip:
            self.skip -= 1
        elif tag == "a" and self.skip:
            self.skip -= 1

    def handle_data(self, data):
        if self.stack and not self.skip:
            self.stack[-1].append(data)


def sections(html_dir: str) -> tuple[list[str], list[str]]:
    docs, names = [], []
    files = sorted(glob.glob(os.path.join(html_dir, "**", "*.html"), recursive=True))
    for path in files:
        rel = os.path.relpath(path, html_dir)
        if rel.startswith(("_", "genindex", "search", "py-modindex")):
            continue
        with open(path, encoding="utf-8") as f:
            p = SectionSplitter()
            p.feed(f.read())
            p.close()
        for i, text in enumerate(p.done):
            if len(text.split()) >= MIN_WORDS:
                docs.append(text)
                names.append(f"{rel}#{i}")
    return docs, names


def save_compact(path: str, X, vocab: list[str]) -> None:
    """Write a CSR count matrix in the dpsvi-compact-v1 layout (see the module docstring)."""
    X = X.tocsr()
    X.sum_duplicates()
    X.sort_indices()
    if X.shape[1] > 65536 or (X.data.size and X.data.max() > 65535):
        raise ValueError("dpsvi-compact-v1 holds at most 65536 words and counts below 65536")
    lengths = np.diff(X.indptr).astype(np.uint32)
    delta = X.indices.astype(np.int64).copy()
    starts = X.indptr[:-1][lengths > 0]
    delta[1:] -= X.indices[:-1]
    delta[starts] = X.indices[starts]  # first word of each document: absolute id
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, format=np.array("dpsvi-compact-v1"), shape=np.array(X.shape, np.int64),
                        lengths=lengths, word_delta=delta.astype(np.uint16),
                        counts=X.data.astype(np.uint16),
                        vocab_utf8=np.frombuffer("\n".join(vocab).encode("utf-8"), np.uint8))
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--html", default=DEFAULT_HTML)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "pydoc.npz"))
    args = ap.parse_args(argv)
    if not os.path.isdir(args.html):
        print(f"{args.html}: not found; install Debian's python3-doc (apt-get install python3-doc)",
              file=sys.stderr)
        return 1
    from sklearn.feature_extraction.text import CountVectorizer

    docs, _ = sections(args.html)
    cv = CountVectorizer(stop_words="english", min_df=5, max_df=0.5, dtype=np.int32)
    X = cv.fit_transform(docs)
    keep = np.asarray(X.sum(axis=1)).ravel() > 0
    X = X[keep]
    vocab = list(cv.get_feature_names_out())
    save_compact(args.out, X, vocab)
    print(f"{args.out}: {X.shape[0]} documents, {X.shape[1]} words, {int(X.sum())} tokens, "
          f"{X.nnz} non-zeros, {os.path.getsize(args.out) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
