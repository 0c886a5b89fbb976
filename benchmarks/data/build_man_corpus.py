"""Build a real LDA corpus of >= 20k documents from the manual pages installed by Debian packages.

Source: every ``/usr/share/man/man[1-8]/*.gz`` of the machine (English pages only, symlinks
skipped), each page split at its ``.SH`` sections and ``.SS`` subsections; each is one document of the
text that belongs to it directly (roff requests and font escapes removed, request arguments kept). SYNOPSIS sections
(option lists) and sections with fewer than ``--min-words`` words are dropped, and a section whose
text is identical to an earlier one (boilerplate shared by many pages, e.g. "GCLOUD WIDE FLAGS") is
kept once. Pages of pre-release command groups (``gcloud_alpha_*``, ``gcloud_beta_*``: near copies
of the GA pages) are skipped unless ``--keep-prerelease``. Tokenised like ``pydoc.npz``
(CountVectorizer, stop_words='english', min_df=5, max_df=0.5).

Licence: each page keeps the licence of the Debian package that installed it (its
``/usr/share/doc/<package>/copyright``); the builder writes the package of every page and the
number of documents per package next to the corpus (``<out>.packages.json``). The corpus is not
committed (mixed licences, and it depends on the packages installed): this script rebuilds it. On
the 2026-12-02 machine: 21,910 documents, V 14,617, 2.48M tokens, from 179 packages - google-cloud-cli
7,940 (Apache-2.0), manpages-dev 3,431 and manpages 1,030 (Linux-man-pages-copyleft, GPL-2+, BSD
variants per page), cmake-data 2,103 (BSD-3-clause), git-man 1,057 (GPL-2), ...

    python benchmarks/data/build_man_corpus.py --out /tmp/man.npz     # ~30 s
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import hashlib
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_pydoc_corpus import save_compact  # noqa: E402

MAN = "/usr/share/man"
#: roff escapes: fonts \fB \f(CW \f[I], sizes \s+2, named characters \(em \[em], strings \*(xx, \e ...
_ESCAPES = re.compile(r"\\f(\(..|\[[^]]*\]|.)|\\s[+-]?\d+|\\\(..|\\\[[^]]*\]|\\\*(\(..|\[[^]]*\]|.)|\\[&|^%:]|\\[e\\]")
_REQUEST = re.compile(r"^[.'](\S+)\s*(.*)$")
_INDENT = re.compile(r"\s+[-+]?[\d.]+[icpPmnvu]?\s*$")  # a trailing indent argument (".IP tag 4n")


def _clean(text: str) -> str:
    text = text.replace("\\-", "-").replace("\\ ", " ").replace('\\"', " ")
    return _ESCAPES.sub(" ", text)


def page_sections(raw: str) -> list[tuple[str, str]]:
    """(heading, text) of every .SH section and .SS subsection of a roff page (a section's text
    stops at its first subsection, which is a document of its own: "SECTION/SUBSECTION")."""
    out, head, section, buf = [], None, "", []
    for line in raw.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue  # comment
        m = _REQUEST.match(line)
        if m:
            req, arg = m.group(1), m.group(2)
            if req in ("SH", "SS"):
                if head is not None:
                    out.append((head, " ".join(buf)))
                sub = _clean(arg).strip().strip('"').upper()
                section = sub if req == "SH" else section
                head, buf = (sub if req == "SH" else f"{section}/{sub}"), []
                continue
            if req == "IP":  # .IP tag indent: the tag is text, the indent is not
                line = _INDENT.sub("", arg).replace('"', " ")
            elif req in ("B", "I", "BR", "RB", "IR", "RI", "BI", "IB", "SM", "SB", "Nm", "Nd", "Sh"):
                line = arg.replace('"', " ")
            else:
                continue  # layout requests (.PP, .RS, .TH, .nf ...)
        if head is not None:
            buf.append(_clean(line))
    if head is not None:
        out.append((head, " ".join(buf)))
    return out


def package_of_files() -> dict[str, str]:
    """Installed file -> Debian package, from dpkg's file lists (no dpkg -S per file)."""
    owner = {}
    for lst in glob.glob("/var/lib/dpkg/info/*.list"):
        pkg = os.path.basename(lst)[:-5].split(":")[0]
        with open(lst, errors="replace") as f:
            for line in f:
                if line.startswith(MAN):
                    owner[line.rstrip("\n")] = pkg
    return owner


def collect(man_dir: str, min_words: int, keep_prerelease: bool):
    owner = package_of_files()
    docs, names, pkgs, seen = [], [], [], set()
    for path in sorted(glob.glob(os.path.join(man_dir, "man[1-8]", "*.gz"))):
        base = os.path.basename(path)
        if os.path.islink(path) or (not keep_prerelease and base.startswith(("gcloud_alpha", "gcloud_beta"))):
            continue
        try:
            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
                raw = f.read()
        except (OSError, EOFError):
            continue
        if raw.lstrip().startswith(".so "):
            continue  # a page that only includes another
        for head, text in page_sections(raw):
            if head.split("/")[0] == "SYNOPSIS" or len(text.split()) < min_words:
                continue
            h = hashlib.blake2b(" ".join(text.split()).encode(), digest_size=16).digest()
            if h in seen:
                continue
            seen.add(h)
            docs.append(text)
            names.append(f"{base}#{head}")
            pkgs.append(owner.get(path, "?"))
    return docs, names, pkgs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--man", default=MAN)
    ap.add_argument("--out", required=True)
    ap.add_argument("--min-words", type=int, default=30)
    ap.add_argument("--keep-prerelease", action="store_true", help="also gcloud alpha/beta pages")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.man):
        print(f"{args.man}: not found", file=sys.stderr)
        return 1
    from sklearn.feature_extraction.text import CountVectorizer

    docs, names, pkgs = collect(args.man, args.min_words, args.keep_prerelease)
    cv = CountVectorizer(stop_words="english", min_df=5, max_df=0.5, dtype=np.int32)
    X = cv.fit_transform(docs)
    keep = np.flatnonzero(np.asarray(X.sum(axis=1)).ravel() > 0)
    X = X[keep]
    vocab = list(cv.get_feature_names_out())
    save_compact(args.out, X, vocab)
    per_pkg = collections.Counter(pkgs[i] for i in keep)
    with open(args.out + ".packages.json", "w") as f:
        json.dump({"documents_per_package": dict(per_pkg.most_common()),
                   "documents": [[names[i], pkgs[i]] for i in keep],
                   "licence": "each document: its package's /usr/share/doc/<package>/copyright"}, f, indent=0)
    print(f"{args.out}: {X.shape[0]} documents, {X.shape[1]} words, {int(X.sum())} tokens, {X.nnz} non-zeros, "
          f"{os.path.getsize(args.out) / 1e6:.2f} MB; packages: "
          + ", ".join(f"{p} {n}" for p, n in per_pkg.most_common(5)) + f", ... ({len(per_pkg)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
