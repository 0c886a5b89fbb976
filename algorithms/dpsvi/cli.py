"""``dpsgd lda`` (fit topics) and ``dpsgd lda-transform`` (infer topic mixtures of documents).

    dpsgd lda --corpus PATH --topics K --passes P --out DIR [--holdout FRAC] [--threads T] [--rule R]
    mpiexec -n N dpsgd lda ...          (rank 0 serves lambda, ranks 1..N-1 work on their shard)
    dpsgd lda-transform --model DIR/model.npz --corpus PATH --out theta.csv

Only argparse-level code runs at import: numba, scipy and scikit-learn are imported by ``run``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

EXIT_USAGE = 2

DESCRIPTION = """\
Fit an LDA topic model by stochastic variational inference (DPSVI): a rank's threads share
each minibatch's E-step (--thread-mode minibatch, the default: sequential SVI, scikit-learn's
result) or run their own minibatches and update lambda without locks (hogwild: faster on short
documents, no faster at V 50k; its held-out log-likelihood depends on the corpus - from 0.04 worse
to 0.05 better than one thread's in the README's runs); under mpiexec every worker rank reads only its shard of the corpus and a
parameter server merges the updates with --rule.

Corpus formats: .npz (scipy sparse + vocabulary, or the compact layout of benchmarks/data),
UCI bag-of-words (docword.NAME.txt[.gz] + vocab.NAME.txt, streamed), a directory of .txt files,
or a .txt file with one document per line (tokenised with --stop-words/--min-df/--max-df).

Writes into --out (every file written to a temporary name and renamed): topics.txt,
metrics.json, progress.csv, model.npz (DPSVI.load reads it), config.json.
"""


def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _positive_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}")
    return v


def _df(s):
    """min_df / max_df: an integer document count or a float proportion, like CountVectorizer."""
    try:
        v = int(s)
    except ValueError:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a count or a proportion, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a count or a proportion >= 0, got {s!r}")
    return v


def add_corpus_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("corpus")
    g.add_argument("--corpus", required=True, metavar="PATH", help="corpus file or directory (formats above)")
    g.add_argument("--vocab", default=None, metavar="FILE",
                   help="vocabulary (one word per line) of a .npz matrix or a UCI docword file")
    g.add_argument("--stop-words", default="english",
                   help="text input: 'english' or 'none' (default english)")
    g.add_argument("--min-df", type=_df, default=2,
                   help="text input: ignore words in fewer documents (count, or proportion; default 2)")
    g.add_argument("--max-df", type=_df, default=0.5,
                   help="text input: ignore words in more documents (proportion, or count; default 0.5)")
    g.add_argument("--max-features", type=_positive_int, default=None,
                   help="text input: keep only this many most frequent words")


def register(subparsers) -> None:
    """Add ``lda`` and ``lda-transform`` to the ``dpsgd`` command line."""
    from dpsgd.launch import add_framework_options  # already imported by the dpsgd CLI

    p = subparsers.add_parser("lda", help="fit an LDA topic model (DPSVI: distributed stochastic variational inference)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_options(p)
    g = p.add_argument_group("model")
    g.add_argument("--topics", type=_positive_int, default=20, help="number of topics K (default 20)")
    g.add_argument("--passes", type=_positive_float, default=1.0,
                   help="passes over the training documents (may be fractional; default 1)")
    g.add_argument("--batch-size", type=_positive_int, default=512, help="documents per minibatch (default 512)")
    g.add_argument("--alpha", type=_positive_float, default=None, help="doc_topic_prior (default 1/K)")
    g.add_argument("--eta", type=_positive_float, default=None, help="topic_word_prior (default 1/K)")
    g.add_argument("--learning-offset", type=float, default=10.0,
                   help="tau0 of rho_t = (tau0 + t)^-kappa (default 10, as scikit-learn)")
    g.add_argument("--learning-decay", type=float, default=0.7, help="kappa (default 0.7, as scikit-learn)")
    g.add_argument("--max-doc-update-iter", type=_positive_int, default=100,
                   help="E-step iterations per document at most (default 100)")
    g.add_argument("--mean-change-tol", type=float, default=1e-3, help="E-step tolerance (default 1e-3)")
    g.add_argument("--sparse-push", choices=("auto", "on", "off"), default="auto",
                   help="lazy-decay layout: updates and pushes carry only the minibatch's words (auto: "
                        "on under mpiexec with the rules sgd/asgd/ssgd when the run's decay fits float32)")
    g.add_argument("--thread-mode", choices=("hogwild", "minibatch"), default="minibatch",
                   help="minibatch (default): a rank's --threads share each minibatch (the updates of one "
                        "thread, reproducible); hogwild: each thread runs its own minibatches, lock-free "
                        "(faster on short documents, but the threads' updates are stale: their held-out "
                        "log-likelihood depends on the corpus)")
    o = p.add_argument_group("output and evaluation")
    o.add_argument("--out", required=True, metavar="DIR", help="output directory")
    o.add_argument("--holdout", type=float, default=0.1,
                   help="fraction of documents held out for the document-completion log-likelihood (default 0.1; 0: none)")
    o.add_argument("--eval-every", type=_positive_float, default=2.0,
                   help="seconds between held-out evaluations written to progress.csv (default 2)")
    o.add_argument("--eval-initial", action="store_true",
                   help="evaluate the starting model too (the first row of progress.csv; always with --resume). "
                        "The workers wait for it: 2-2.5 s at 10k held-out documents, V 50k, K 100, four times "
                        "the final evaluation")
    o.add_argument("--top-words", type=_positive_int, default=10, help="words per topic in topics.txt (default 10)")
    o.add_argument("--quiet", action="store_true", help="do not print the topics")
    add_framework_options(p, lr=1.0, rule="asgd")
    # SVI's step size rho_t = lr * (tau0 + t)^-kappa: the power schedule by default
    p.set_defaults(func=run, schedule="power")

    t = subparsers.add_parser("lda-transform", help="topic mixtures of documents under a fitted LDA model",
                              description="Infer the topic proportions of every document of --corpus with the "
                                          "topics of --model (model.npz of `dpsgd lda`) and write them to --out "
                                          "(.csv: doc,topic_0,...; .npy: an array). Words unknown to the model are ignored.")
    t.add_argument("--model", required=True, metavar="FILE", help="model.npz written by `dpsgd lda`")
    add_corpus_options(t)
    t.add_argument("--out", required=True, metavar="FILE", help="output .csv or .npy")
    t.add_argument("--threads", type=_positive_int, default=None, help="threads (default: all cores)")
    t.set_defaults(func=run_transform)


# ============================================================================ lda


def _usage(msg: str):
    from dpsgd.config import ConfigError

    return ConfigError(msg)


def _validate(args):
    if not 0 <= args.holdout < 1:
        raise _usage(f"--holdout must be in [0, 1), got {args.holdout}")
    if args.learning_offset < 0:
        raise _usage(f"--learning-offset must be >= 0, got {args.learning_offset}")
    if not 0 <= args.learning_decay <= 1:
        raise _usage(f"--learning-decay must be in [0, 1], got {args.learning_decay}")
    if not args.mean_change_tol >= 0:
        raise _usage(f"--mean-change-tol must be >= 0, got {args.mean_change_tol}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise _usage(f"--out {args.out}: exists and is not a directory")


#: words per topic that NPMI scores (the pairs among each topic's top words)
NPMI_TOP_WORDS = 10


def _cv_options(args) -> dict:
    sw = None if str(args.stop_words).lower() in ("none", "") else args.stop_words
    return dict(stop_words=sw, min_df=args.min_df, max_df=args.max_df, max_features=args.max_features)


class CorpusPlan:
    """Which documents are held out, and which training documents each worker rank reads.

    UCI files and scipy CSR ``.npz`` files are never loaded whole. One process needs every document
    (its shard and the held-out ones): it reads the file once and copies the two groups' rows out
    of it as it goes (:meth:`npz_rows.NpzRows.read_groups`, :func:`npz_rows.take_groups`), never
    holding the whole matrix next to the groups' copy of it; other formats (text, the compact npz
    of the bundled corpora) are loaded whole. Under ``mpiexec`` (``ranks`` > 1) rank 0 reads the
    corpus once, whatever its format, and sends each rank its own documents
    (:func:`_scatter_documents`): the other ranks never open it (a text corpus's vocabulary is
    built once, not by every rank).
    """

    def __init__(self, args, seed: int, ranks: int = 1, rank: int = 0, n_servers: int = 1):
        from . import corpus as C

        self.args = args
        self.path = args.corpus
        self.uci = None
        if os.path.isdir(self.path):
            found = sorted(f for f in os.listdir(self.path) if C.is_uci(f))
            if len(found) == 1:
                self.uci = os.path.join(self.path, found[0])
        elif C.is_uci(self.path) and os.path.exists(self.path):
            self.uci = self.path
        self.full = None
        #: the row reader of a scipy .npz (one process, or rank 0 under mpiexec)
        self.npz = None
        #: the words (None on the ranks rank 0 sent their documents to: they need only their count)
        self.vocab = None
        #: [(ids, CSR)] read before they are asked for (one process: the held-out and training documents)
        self.read_ahead = []
        # DPSVI_NPZ_ROWS=0: load a .npz whole on every rank, as before the row reader (for A/B runs)
        by_rows = (self.uci is None and self.path.endswith(".npz") and os.path.isfile(self.path)
                   and os.environ.get("DPSVI_NPZ_ROWS", "1") != "0")
        got = None
        if ranks > 1:
            # rank 0 reads the corpus once, whatever its format, and sends every rank its documents
            # (a scipy .npz as it reads it; another format once it is read)
            got = _scatter_documents(self.path, lambda groups_of: self._read_groups(groups_of, by_rows, whole=True),
                                     lambda n: _rank_ids(*_split_ids(n, args.holdout, seed), ranks, n_servers),
                                     self._open_npz if by_rows else None)
        elif self.uci is not None or by_rows:
            got = self._read_groups(lambda n: list(_split_ids(n, args.holdout, seed)), by_rows)
        if got is not None:
            n_docs, self.n_words, self.read_ahead = got
        else:  # one process: text, the bundled compact .npz, or a .npz the row reader does not accept
            self.full = C.load_corpus(self.path, vocab=args.vocab, **_cv_options(args))
            self.vocab = self.full.vocab
            n_docs, self.n_words = self.full.n_docs, len(self.vocab)
        #: no rank loads the whole corpus (each has only its own documents)
        self.streamed = self.full is None
        self.heldout_ids, self.train_ids = _split_ids(n_docs, args.holdout, seed)
        if self.train_ids.size < 1:
            raise C.CorpusError(f"{self.path}: {n_docs} document(s): nothing left to train on after the held-out split")
        self.n_docs = n_docs

    def _read_groups(self, groups_of, by_rows: bool, whole: bool = False):
        """On the rank that reads the corpus: (documents, words, [(ids, CSR)] of each group of
        documents ``groups_of(n_docs)`` returns) - a UCI file or (``by_rows``) a scipy .npz in one
        pass over the file; None for another format or a .npz the row reader does not accept, unless
        ``whole``: then that corpus is loaded whole (``load_corpus``, which reports what is wrong)
        and the groups' rows copied out of it. Sets :attr:`vocab` (and :attr:`npz`)."""
        import numpy as np

        from . import corpus as C
        from .npz_rows import NpzRows, take_groups

        if self.uci is not None:
            n_docs = C.uci_header(self.uci)[0]
            groups = groups_of(n_docs)
            c = C.read_uci(self.uci, self.args.vocab, compact=True)
            self.vocab = c.vocab
            row_of = np.full(n_docs, -1, np.int64)  # documents without lines have no row
            row_of[c.doc_ids] = np.arange(c.X.shape[0])
            rows = [row_of[ids][row_of[ids] >= 0] for ids in groups]
            return n_docs, len(self.vocab), list(zip(groups, take_groups(c, rows, self.uci)))
        got = NpzRows.read_groups(self.path, groups_of) if by_rows else None
        if got is None:
            if not whole:
                return None
            full = C.load_corpus(self.path, vocab=self.args.vocab, **_cv_options(self.args))
            self.npz, self.vocab = None, full.vocab  # (a row reader that gave up half-way is dropped)
            return full.n_docs, len(self.vocab), [(ids, _nonempty_rows(full.X, ids)) for ids in groups_of(full.n_docs)]
        self._took_npz(got[0])
        return self.npz.n_docs, self.npz.shape[1], got[1]

    def _open_npz(self, groups_of, sent):
        """On rank 0 under mpiexec: the row reader of a scipy .npz and the row sets of every rank's
        documents ``groups_of(n_docs)`` (``sent``: the other ranks', sent as the file is read,
        :func:`_stream_documents`), or None when the row reader does not take the file."""
        from .npz_rows import NpzRows

        got = NpzRows.open_groups(self.path, groups_of, sent=sent)
        if got is not None:
            self._took_npz(got[0])
        return got

    def _took_npz(self, reader) -> None:
        """The row reader of the corpus: its vocabulary (checked) and a word on its empty documents."""
        import warnings

        import numpy as np

        from . import corpus as C

        self.npz = reader
        vocab_path = C.npz_vocab_path(self.path, self.args.vocab)
        self.vocab = C.check_vocab(C.read_vocab(vocab_path) if vocab_path else None, reader.shape[1], self.path)
        if reader.n_docs < reader.shape[0]:
            empty = np.setdiff1d(np.arange(reader.shape[0]), reader.rows)
            warnings.warn(f"{self.path}: skipped {empty.size} document(s) with no words "
                          f"(after the vocabulary filters), e.g. {empty[:5].tolist()}", stacklevel=4)

    def _rows(self, ids):
        """CSR of the documents ``ids`` (indices of the input, in that order), empty ones removed."""
        import numpy as np

        import scipy.sparse as sp

        from . import corpus as C

        if len(ids) == 0:  # e.g. more worker ranks than training documents
            return sp.csr_matrix((0, self.n_words), dtype=np.float32)
        for i, (got, X) in enumerate(self.read_ahead):
            if np.array_equal(got, ids):
                del self.read_ahead[i]  # handed over: the plan keeps no reference to it
                return X
        if self.npz is not None:
            return self.npz.csr(ids)
        if self.full is not None:
            # rows of the loaded corpus: doc_ids are positions in the input (or line numbers)
            return _nonempty_rows(self.full.X, ids)
        keep = np.zeros(self.n_docs, bool)  # (under mpiexec: every rank reads only its documents)
        keep[ids] = True
        c = C.read_uci(self.uci, self.args.vocab, keep=keep, compact=True)
        # back to the order of ids (documents without words were dropped by the reader)
        pos = np.full(self.n_docs, -1, np.int64)
        pos[ids] = np.arange(len(ids))
        rows = np.argsort(pos[c.doc_ids], kind="stable")
        return c.X[rows]

    def shard(self, worker: int, n_workers: int):
        return self._rows(_shard_ids(self.train_ids, worker, n_workers))

    def heldout(self, seed: int):
        """``((Xo, Xt), docs)``: the held-out documents' observed and test halves (None when no
        document has two) and the documents for NPMI (:class:`evaluate.HeldoutDocuments`: the
        halves and the documents the split dropped, no third copy of them)."""
        from .evaluate import HeldoutDocuments, split_documents

        if self.heldout_ids.size == 0:
            return None, None
        Xo, Xt, rest = split_documents(self._rows(self.heldout_ids), 0.5, seed=seed, dropped=True)
        return ((Xo, Xt) if Xo.shape[0] else None), HeldoutDocuments(Xo, Xt, rest)


def _scatter_documents(path: str, read, groups_of, open_stream=None):
    """Under mpiexec, every rank calling it: rank 0 reads the corpus once and sends every rank its
    documents (the groups ``groups_of(n_docs)``, one a rank); returns (documents, words, [(ids, CSR)]
    of this rank), or None on every rank when the corpus is not read this way. ``open_stream``
    (rank 0): ``open_stream(groups_of, sent)`` -> (row reader, row sets) of a .npz whose rows are
    sent as it is read (:func:`_stream_documents`), or None; else, and when a bad count or index
    turns up on the way, ``read(groups_of)`` -> (documents, words, [(ids, CSR)] of every rank) or
    None, and each rank's CSR is sent once it is read. A CorpusError on rank 0 is raised there and
    a short one on the others. One reading of the file instead of one a rank (100k documents, V 50k,
    three ranks on two cores: rank 0 read for 2.1-2.4 s while every rank inflated the whole .npz)."""
    import numpy as np

    import scipy.sparse as sp

    from dpsgd.runner import broadcast_from_root, get_comm, scatter_from_root

    from .corpus import CorpusError

    comm = get_comm()
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    # documents, words, 1: streamed / 0: sent once read; -1: not read, -2: rank 0's CorpusError
    info = np.full(3, -1, np.int64)
    got = opened = error = None
    if rank == 0:
        try:
            opened = open_stream(groups_of, range(1, size)) if open_stream is not None and size > 1 else None
            if opened is not None:
                info[:] = opened[0].n_docs, opened[0].shape[1], 1
            else:
                got = read(groups_of)
                if got is not None:
                    info[:] = got[0], got[1], 0
        except CorpusError as e:
            error, info[0] = e, -2
    info = broadcast_from_root(info)
    if info[0] == -2:
        raise error if error is not None else CorpusError(f"{path}: rank 0 could not read it (see its message)")
    if info[0] == -1:
        return None
    n_docs, n_words = int(info[0]), int(info[1])
    if info[2] == 1:
        mine = _stream_documents(path, opened, np.asarray(groups_of(n_docs)[rank]), n_words)
        if mine is None:  # a bad count or index on the way: rank 0 loads it whole, which reports it
            return _scatter_documents(path, read, groups_of)
        return n_docs, n_words, mine
    parts = None
    if rank == 0:
        parts = [[X.indptr, X.data, X.indices] for _, X in got[2]]
        got[2].clear()  # the other ranks' documents go once they are sent
    indptr, data, indices = scatter_from_root(parts)
    del parts
    ids = np.asarray(groups_of(n_docs)[rank])
    X = sp.csr_matrix((data, indices, indptr), shape=(indptr.size - 1, n_words))
    if X.shape[0] > ids.size:
        raise ValueError(f"{path}: rank {rank} received {X.shape[0]} documents, at most {ids.size} expected")
    return n_docs, n_words, [(ids, X)]


#: the states of a message of :func:`_stream_documents`
_PIECE, _END, _ABORT = 1, 0, -1


def _stream_documents(path: str, opened, ids, n_words: int):
    """Every rank calling it: rank 0 reads the .npz with the row reader and row sets ``opened``
    and, block by block, sends every other rank its documents' entries as it goes (the plan of
    its rows first); each of them puts its CSR together from the pieces. Rank 0 thus never holds
    the other ranks' documents (its peak: its own, held out, and a block; node 0 needs no more
    memory than the others) and the sending is spread over the reading instead of coming after
    it. Returns [(ids, CSR)] of this rank, or None on every rank when rank 0 found a bad count or
    index (or explicit zeros) on the way."""
    import numpy as np

    import scipy.sparse as sp

    from dpsgd.runner import get_comm, post_scatter, scatter_from_root

    from .npz_rows import _RowSet

    size = get_comm().Get_size()
    if opened is not None:  # rank 0
        reader, sets = opened
        sent = range(1, size)
        scatter_from_root([[]] + [sets[r].plan(reader.data_dtype) for r in sent])
        posted = []

        def ship(pieces):
            # this block's pieces go while the next one is read; the block before's must be gone
            # before its buffers are written again (NpzRows.fill)
            posted.append(post_scatter([[]] + [[np.array([_PIECE, pieces[r][0]], np.int64), *pieces[r][1:]]
                                               for r in sent]))
            if len(posted) > 1:
                posted.pop(0).wait()

        try:
            parts = reader.fill(sets, sent, ship)
        finally:
            for p in posted:
                p.wait()
        scatter_from_root([[]] + [[np.array([_END if parts is not None else _ABORT, 0], np.int64)] for _ in sent])
        return None if parts is None else [parts[0]]
    want = _RowSet.from_plan(ids, scatter_from_root(None))
    while True:
        msg = scatter_from_root(None)
        state, q0 = int(msg[0][0]), int(msg[0][1])
        if state == _PIECE:
            want.copy_from(q0, msg[1], msg[2])
        elif state == _ABORT:
            return None
        else:
            X = want.matrix(n_words, path) if ids.size else sp.csr_matrix((0, n_words), dtype=np.float32)
            return [(ids, X)]


def _eval_threads(size: int) -> int:
    """Threads of the held-out evaluations during training: every core in one process, where
    training pauses for them (on 10k held-out documents, V 50k, K 100 one took 0.6-0.7 s on one
    thread); one under MPI, where the server evaluates beside the workers. The final evaluation
    uses every core either way (:meth:`SVIAlgorithm.evaluate_final`)."""
    from dpsgd.config import available_cores

    return available_cores() if size == 1 else 1


def _split_ids(n_docs: int, holdout: float, seed: int):
    """(held-out ids, training ids) of ``n_docs`` documents: a ``holdout`` fraction (at least one
    document when it is > 0 and there are two), drawn with the run's seed."""
    import numpy as np

    perm = np.random.default_rng([seed, 7]).permutation(n_docs)
    n_hold = int(round(holdout * n_docs))
    if holdout > 0 and n_hold == 0 and n_docs > 1:
        n_hold = 1
    return perm[:n_hold], perm[n_hold:]


def _shard_ids(train_ids, worker: int, n_workers: int):
    """The training documents of worker ``worker`` of ``n_workers``: a contiguous share of ``train_ids``."""
    import numpy as np

    b = np.linspace(0, train_ids.size, n_workers + 1).astype(np.int64)
    return train_ids[b[worker]:b[worker + 1]]


def _rank_ids(held, train, ranks: int, n_servers: int) -> list:
    """The documents each of ``ranks`` MPI ranks reads, from the split (``held``, ``train``) of
    :func:`_split_ids`: rank 0 the held-out ones, a worker rank its shard, the other server ranks
    none."""
    return [held if r == 0 else train[:0] if r < n_servers else _shard_ids(train, r - n_servers, ranks - n_servers)
            for r in range(ranks)]


def _nonempty_rows(X, ids):
    """The rows ``ids`` of the loaded corpus ``X`` (doc_ids are positions in the input, or line
    numbers), documents without words left out - no second copy when every one has words."""
    import numpy as np

    X = X[np.asarray(ids, np.int64)]
    empty = np.diff(X.indptr) == 0
    return X[~empty] if empty.any() else X


def _checkpoint_updates(directory: str) -> int:
    """Updates counted in the checkpoint a --resume starts from; 0 if it cannot be read (the
    server rank, which loads it too, reports why)."""
    from dpsgd import checkpoint as ckpt

    try:
        return int(ckpt.load_latest(directory, 0, warn=lambda *_: None)[1].get("total_updates", 0))
    except (ckpt.CheckpointError, OSError, ValueError, TypeError):
        return 0


def run(args) -> int:
    import time

    from dpsgd.launch import config_from_args, rank_from_env, return_large_frees
    from dpsgd.runner import mpi_world_size_from_env, process_start_unix

    clock = {"process_start": process_start_unix(), "run": time.time()}  # see phase_seconds

    _validate(args)
    return_large_frees()  # model-sized temporaries go back to the system when freed (see there)
    size = mpi_world_size_from_env()
    rank = rank_from_env()
    n_servers = args.n_servers if size > 1 else 1
    n_workers = size - n_servers if size > 1 else 1
    is_root = rank == 0

    from . import corpus as C
    from .corpus import CorpusError
    from .svi import SVIAlgorithm

    if size > 1 and not is_root:
        from dpsgd.runner import warm_up_in_background

        # while rank 0 reads the corpus, before it sends this rank its documents (on rank 0 the
        # thread held the GIL against the reading: 0.6 s more of it)
        warm_up_in_background()
    t0 = time.perf_counter()
    try:
        corpus = CorpusPlan(args, args.seed, ranks=size, rank=rank, n_servers=n_servers)
    except CorpusError as e:
        raise _usage(str(e)) from None
    V = corpus.n_words
    K = args.topics
    alpha = args.alpha if args.alpha is not None else 1.0 / K
    eta = args.eta if args.eta is not None else 1.0 / K
    D = int(corpus.train_ids.size)
    heldout, Xh = (None, None)
    if is_root:
        try:
            heldout, Xh = corpus.heldout(args.seed)
        except CorpusError as e:
            raise _usage(str(e)) from None
    run_plan = _run_plan(args, D, size, n_workers)
    threads, team = run_plan.threads, run_plan.team
    total = run_plan.total_updates
    cfg = config_from_args(args, total_updates=total, out=args.out, tau0=run_plan.tau0, kappa=run_plan.kappa,
                           threads=threads, eval_every=args.eval_every if heldout is not None else None,
                           eval_initial=args.eval_initial or bool(args.resume))

    X = None
    if size == 1 or rank >= n_servers:
        # a training rank reads its shard before training starts (reading is not training time)
        # and keeps only its documents (one process: NPMI then pools the training and held-out
        # documents, the same corpus without a second copy of it); a server rank reads none
        try:
            X = corpus.shard(rank - n_servers if size > 1 else 0, n_workers)
        except CorpusError as e:
            raise _usage(str(e)) from None
        corpus.full = None
        X = C.compact_counts(X)  # uint16 counts when they fit: 6 bytes an entry instead of 8

    alg = SVIAlgorithm(X, V, K, alpha=alpha, eta=eta, total_docs=D, batch_size=args.batch_size,
                       max_doc_update_iter=args.max_doc_update_iter, mean_change_tol=args.mean_change_tol,
                       heldout=heldout, sparse_push=run_plan.sparse_push, local_steps=cfg.local_steps,
                       team_threads=team, eval_threads=_eval_threads(size))
    if cfg.resume and (size == 1 or rank >= n_servers):
        # the worker threads go on through their documents from where the checkpoint's updates
        # left them (starting at their first minibatch again would revisit those documents and,
        # with --passes <= 1, never reach the rest)
        alg.start_updates = _checkpoint_updates(cfg.resume)
    load_seconds = time.perf_counter() - t0
    if is_root and not args.no_progress:
        print(f"dpsgd lda: {corpus.n_docs} documents ({D} training, {corpus.heldout_ids.size} held out), "
              f"{V} words, K={K}, {total} minibatches of {args.batch_size}, rule={cfg.rule.name}, "
              f"{n_workers} worker(s) x {team if team > 1 else cfg.threads or 'auto'} thread(s) ({args.thread_mode})",
              file=sys.stderr)
    import dpsgd

    clock["train"] = time.time()
    result = dpsgd.train(alg, cfg)
    clock["trained"] = time.time()
    comp = tops = None
    if result.is_root:
        from .evaluate import top_words

        # the topics once: topics.txt and NPMI take their top words from the same list
        comp = _components(alg, result.params, V, K)
        tops = top_words(comp, max(args.top_words, NPMI_TOP_WORDS))  # (a row's order does not depend on its scale)
    spread = None
    if size > 1 and corpus.streamed:
        # no rank holds the corpus (streamed .npz or UCI): NPMI's counts come from every rank's own
        # documents - the workers' shards and the root's held-out ones - summed on the root
        spread = _timed(clock, "npmi", _spread_cooccurrence, alg, tops, Xh, V, K)
    if not result.is_root:
        return 0
    return _write_outputs(LdaRun(args=args, cfg=cfg, result=result, alg=alg, corpus=corpus, plan=run_plan,
                                 heldout=heldout, Xh=Xh, V=V, K=K, alpha=alpha, eta=eta, D=D,
                                 load_seconds=load_seconds, clock=clock, comp=comp, tops=tops,
                                 spread_cooccurrence=spread))


def _components(alg, params, V: int, K: int):
    """The K x V components as the model file holds them (its rows normalised are the topics:
    :func:`evaluate.top_words` with ``normalize`` does that a few rows at a time)."""
    from .svi import topic_word_from_lambda

    return topic_word_from_lambda(alg.lambda_of(params), V, K)


def _spread_cooccurrence(alg, root_tops, Xh, V: int, K: int, n: int = NPMI_TOP_WORDS):
    """Under mpiexec (every rank calls it): NPMI's co-occurrence counts of the root's top-``n``
    words (``root_tops``: each topic's top words on the root, None elsewhere) over every rank's own
    documents, summed on the root - there (tops, words, upper, D), None elsewhere. The root's top
    words go to the others, so all count the same words."""
    import numpy as np

    from dpsgd.runner import broadcast_from_root, sum_to_root

    from .evaluate import cooccurrence

    tops = np.full((K, min(n, V)), -1, np.int64)
    if root_tops is not None:
        tops[:] = root_tops[:, :n]
    tops = broadcast_from_root(tops)
    mine = [x for x in (alg.X, Xh) if x is not None]
    counts, D = cooccurrence(tops, mine)
    total = sum_to_root(np.append(counts.ravel(), float(D)))
    if total is None:
        return None
    return total[:-1].reshape(counts.shape), int(total[-1])


def _run_plan(args, n_docs: int, size: int, n_workers: int):
    """The run plan (:mod:`.plan`) before the config: the schedule's tau0, the total and the threads."""
    from dpsgd.config import default_threads, ranks_on_this_node

    from .plan import make_plan

    try:
        return make_plan(n_docs, args.batch_size, args.passes, n_workers=n_workers,
                         threads=args.threads or default_threads(ranks_on_this_node(size)),
                         thread_mode=args.thread_mode, learning_offset=args.learning_offset,
                         learning_decay=args.learning_decay, batches_done=1,
                         sparse_push={"on": True, "off": False}.get(args.sparse_push, "auto"),
                         rule=args.rule, distributed=size > 1)
    except ValueError as e:
        raise _usage(str(e)) from None


@dataclass
class LdaRun:
    """Everything ``dpsgd lda`` writes its outputs from (rank 0, after training)."""

    args: object
    cfg: object  # dpsgd.TrainConfig
    result: object  # dpsgd.TrainResult
    alg: object  # SVIAlgorithm
    corpus: object  # CorpusPlan
    plan: object  # plan.RunPlan
    heldout: tuple | None
    Xh: object  # the held-out documents for NPMI (evaluate.HeldoutDocuments), None when none
    V: int
    K: int
    alpha: float
    eta: float
    D: int
    load_seconds: float
    clock: dict  # time.time() at process start, run(), train() and its return; npmi seconds
    comp: object  # the components (K x V, unnormalised: _components)
    tops: object  # each topic's top words, most probable first (at least NPMI_TOP_WORDS and --top-words)
    #: NPMI's counts summed over the ranks (:func:`_spread_cooccurrence`), when no rank holds the corpus
    spread_cooccurrence: tuple | None = None


def phase_seconds(m: dict, history: list, clock: dict, load_seconds: float, now: float) -> dict:
    """Where this rank's wall time went, from process start to ``now`` (the outputs written but
    metrics.json): interpreter and imports, reading the corpus, from the call of ``dpsgd.train``
    to the first update (MPI start-up, the server, loading the Numba kernels, the initial held-out
    evaluation - also given alone), training, the final held-out evaluation, NPMI, the outputs;
    ``other``: what is left (the set-up around reading, gathering the model, the metrics). Under
    MPI the root's clock: the workers read their shards meanwhile."""
    first = float(m.get("first_update_unix", float("nan")))
    training = float(m.get("training_wall_seconds", float("nan")))
    initial = sum(h["eval_duration"] for h in history if h.get("eval_initial"))
    p = {"start_up": clock["run"] - clock["process_start"], "reading": load_seconds,
         "before_training": first - clock["train"], "initial_evaluation": initial, "training": training,
         "final_evaluation": float(m.get("final_eval_seconds", 0.0)), "npmi": clock.get("npmi", 0.0),
         "outputs": now - clock["trained"] - clock.get("npmi", 0.0)}
    total = now - clock["process_start"]
    p["other"] = total - sum(v for k, v in p.items() if k != "initial_evaluation")
    p["total"] = total
    return {k: round(v, 4) for k, v in p.items()}


def _timed(clock: dict, name: str, fn, *args):
    """``fn(*args)``, its seconds added to ``clock[name]``."""
    import time

    t0 = time.perf_counter()
    try:
        return fn(*args)
    finally:
        clock[name] = clock.get(name, 0.0) + time.perf_counter() - t0


def _rows_of(ref) -> int:
    if isinstance(ref, list):
        return sum(x.shape[0] for x in ref)
    return ref.n_docs if hasattr(ref, "n_docs") else ref.shape[0]


def _write_outputs(run: LdaRun) -> int:
    m = dict(run.result.metrics)
    history = m.pop("history", [])
    m.pop("push_workers", None)
    comp = run.comp
    out = _run_metrics(run, m)
    os.makedirs(run.args.out, exist_ok=True)
    tops = run.tops[:, :run.args.top_words]
    lines = [f"topic {k:3d}: " + " ".join(run.corpus.vocab[w] for w in tops[k]) for k in range(run.K)]
    _write_files(run, m, out, history, comp, lines)
    if not run.args.quiet:
        print("\n".join(lines))
    ll = out["heldout_loglik"]
    print(f"dpsgd lda: {out['documents_seen']} documents in {out['wall_seconds']:.2f} s "
          f"({out['docs_per_second']:.0f} docs/s in training)"
          + (f", held-out log-likelihood {ll:.4f} per word (perplexity {out['perplexity']:.1f})" if ll is not None else "")
          + (f", NPMI {out['npmi']:.3f}" if out["npmi"] is not None else "")
          + f"; wrote {run.args.out}", file=sys.stderr)
    return 0


def _run_metrics(run: LdaRun, m: dict) -> dict:
    """metrics.json: quality, rates and sizes of the run (``m``: the framework's metrics)."""
    import math

    from .evaluate import npmi_of_counts, npmi_of_tops

    alg, result = run.alg, run.result
    final = m.pop("final", {}) or {}
    # the root rank of an MPI run does not see the workers' own document counts: the plan's average
    docs = run.plan.documents(int(m.get("total_updates", 0)), run.D)
    counts = alg.thread_counts
    if counts and all(c.docs for c in counts):
        docs = sum(c.docs for c in counts)
    # training: from the first update of any worker (set-up, reading and the hello excluded, in one
    # process and under MPI alike) to the end, less the evaluations that paused it
    wall = float(m["wall_seconds"])
    window = float(m.get("training_wall_seconds", float("nan")))
    if not math.isfinite(window):
        window = wall
    train_seconds = max(window - float(m.get("paused_eval_seconds", m.get("eval_seconds", 0.0))), 1e-9)
    # NPMI needs many reference documents: the whole corpus when this rank has it in memory
    npmi_value = None
    if run.spread_cooccurrence is not None:  # MPI: every rank counted its own documents
        ref, ref_name = None, "whole corpus"
        npmi_value = npmi_of_counts(*run.spread_cooccurrence) if run.spread_cooccurrence[1] > 1 else None
    elif run.corpus.full is not None:
        ref, ref_name = run.corpus.full.X, "whole corpus"
    elif alg.X is not None:  # one process: it trained on all the other documents
        ref, ref_name = [x for x in (alg.X, run.Xh) if x is not None], "whole corpus"
    else:
        ref, ref_name = run.Xh, "held-out documents"
    if ref is not None and _rows_of(ref) > 1:
        npmi_value = _timed(run.clock, "npmi", lambda: npmi_of_tops(run.tops[:, :NPMI_TOP_WORDS], ref))
    out = {
        "heldout_loglik": final.get("heldout_loglik"),
        "perplexity": final.get("perplexity"),
        "npmi": npmi_value,
        "npmi_reference": f"{ref_name} (document co-occurrence of each topic's top-{NPMI_TOP_WORDS} words)",
        "documents_seen": docs,
        "docs_per_second": docs / train_seconds,
        "docs_per_second_wall": docs / wall,
        "wall_seconds": wall,
        "train_seconds": train_seconds,
        "load_seconds": run.load_seconds,
        "n_documents": int(run.corpus.n_docs),
        "n_training_documents": run.D,
        "n_heldout_documents": int(run.heldout[0].shape[0]) if run.heldout is not None else 0,
        "n_words": run.V,
        "n_topics": run.K,
        "passes": run.args.passes,
        "updates_per_pass": run.plan.updates_per_pass,
        "sparse_push": bool(alg.sparse_push),
        "thread_mode": run.args.thread_mode,
        "threads_per_rank": max(alg.team_threads, run.cfg.threads or 1),
        # measured over MPI (header included); in one process nothing goes on a wire and this is
        # the size of a dense push of the whole parameter vector
        "bytes_per_push": float(m.get("push_bytes_mean", 64 + 4 * result.params.size)),
        "bytes_per_pull": float(m.get("pull_bytes_mean", 64 + 4 * result.params.size)),
    }
    if counts:  # the root rank's own worker threads (one-process runs)
        docs_local = sum(c.docs for c in counts)
        if docs_local:
            out["estep_iterations_per_document"] = sum(c.iters for c in counts) / docs_local
            out["distinct_words_per_minibatch"] = sum(c.words for c in counts) / max(
                1, sum(math.ceil(c.docs / run.args.batch_size) for c in counts))
    out["framework"] = m
    return out


def _write_files(run: LdaRun, m: dict, out: dict, history: list, comp, lines: list) -> None:
    """topics.txt, progress.csv, model.npz, config.json and metrics.json into ``--out``."""
    import json
    import time

    from dpsgd.checkpoint import atomic_write_text

    from . import modelfile

    args = run.args
    atomic_write_text(os.path.join(args.out, "topics.txt"), "\n".join(lines) + "\n")
    rows = ["seconds,updates,documents,heldout_loglik,perplexity"]
    for h in history:
        rows.append(f"{h['seconds']:.4f},{int(h['updates'])},{run.plan.documents(int(h['updates']), run.D)},"
                    f"{h.get('heldout_loglik', float('nan')):.6f},{h.get('perplexity', float('nan')):.4f}")
    if out["heldout_loglik"] is not None:
        rows.append(f"{out['wall_seconds']:.4f},{int(m.get('total_updates', 0))},{out['documents_seen']},"
                    f"{out['heldout_loglik']:.6f},{out['perplexity']:.4f}")
    atomic_write_text(os.path.join(args.out, "progress.csv"), "\n".join(rows) + "\n")
    # DPSVI.load reads it (written without the estimator: no scikit-learn in the CLI's memory)
    params = dict(n_components=run.K, doc_topic_prior=run.alpha, topic_word_prior=run.eta,
                  learning_offset=args.learning_offset, learning_decay=args.learning_decay,
                  batch_size=args.batch_size, mean_change_tol=args.mean_change_tol,
                  max_doc_update_iter=args.max_doc_update_iter, total_samples=run.D,
                  rule=run.cfg.rule.name, random_state=args.seed)
    meta = modelfile.make_meta(params, doc_topic_prior_=run.alpha, topic_word_prior_=run.eta,
                               n_batch_iter_=int(m.get("total_updates", 0)) + 1, n_iter_=args.passes,
                               n_features_in_=run.V,
                               extra={"corpus": os.path.abspath(args.corpus), "heldout_loglik": out["heldout_loglik"]})
    modelfile.write(os.path.join(args.out, "model.npz"), comp, meta, vocabulary=run.corpus.vocab)
    conf = {"command": "lda", "args": {k: v for k, v in vars(args).items() if k != "func"},
            "train_config": run.cfg.to_dict()}
    atomic_write_text(os.path.join(args.out, "config.json"), json.dumps(conf, indent=1, default=str) + "\n")
    # last: its presence means the outputs are complete, and its clock covers writing them
    out["phase_seconds"] = phase_seconds(m, history, run.clock, run.load_seconds, time.time())
    atomic_write_text(os.path.join(args.out, "metrics.json"), json.dumps(out, indent=1, default=float) + "\n")


# ============================================================================ lda-transform


def run_transform(args) -> int:
    import numpy as np

    from dpsgd.checkpoint import atomic_write_bytes

    from . import corpus as C
    from .model import DPSVI

    if not args.out.endswith((".csv", ".npy")):
        raise _usage(f"--out {args.out}: must end in .csv or .npy")
    try:
        model = DPSVI.load(args.model)
    except (ValueError, OSError) as e:
        raise _usage(str(e)) from None
    vocab = getattr(model, "vocabulary_", None)
    try:
        if vocab is not None and not C.is_uci(args.corpus) and (
                os.path.isdir(args.corpus) or args.corpus.endswith((".txt", ".txt.gz"))) and not (
                os.path.isdir(args.corpus) and any(C.is_uci(f) for f in os.listdir(args.corpus))):
            c = C.load_corpus(args.corpus, vocabulary=vocab, **_cv_options(args))
            X = c.X
        else:
            c = C.load_corpus(args.corpus, vocab=args.vocab, **_cv_options(args))
            X = c.X
            if vocab is not None and c.vocab != vocab:
                X = C.remap_columns(X, c.vocab, vocab)
            elif X.shape[1] != model.components_.shape[1]:
                raise C.CorpusError(f"{args.corpus}: {X.shape[1]} words, the model has {model.components_.shape[1]} "
                                    "(and no vocabulary to match them by name)")
    except C.CorpusError as e:
        raise _usage(str(e)) from None
    if args.threads is not None:
        model.n_threads = args.threads
    theta = model.transform(X)
    ids = np.asarray(c.doc_ids)
    if args.out.endswith(".npy"):
        atomic_write_bytes(args.out, lambda f: np.save(f, theta))
    else:
        K = theta.shape[1]
        lines = ["doc," + ",".join(f"topic_{k}" for k in range(K))]
        lines += [f"{i}," + ",".join(f"{v:.6g}" for v in row) for i, row in zip(ids, theta)]
        from dpsgd.checkpoint import atomic_write_text

        atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"dpsgd lda-transform: {theta.shape[0]} documents x {theta.shape[1]} topics -> {args.out}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """``python -m algorithms.dpsvi.cli lda ...`` (the same as ``dpsgd lda ...``)."""
    from dpsgd.launch import main as dpsgd_main

    return dpsgd_main(argv)


if __name__ == "__main__":
    from dpsgd.launch import cli

    cli()  # main() and the dpsgd program's fast exit
