"""`dpsgd lda` / `dpsgd lda-transform` end to end, in one process and under mpiexec."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, clean_env, dpsgd_cmd, run


def _uci(tmp_path, n_docs=300, seed=0):
    from algorithms.dpsvi.corpus import synthetic_lda

    X, _ = synthetic_lda(n_docs, 60, 3, doc_length=30, alpha=0.2, eta=0.05, seed=seed)
    coo = X.tocoo()
    lines = [str(n_docs), "60", str(coo.nnz)]
    lines += [f"{r + 1} {c + 1} {int(v)}" for r, c, v in sorted(zip(coo.row, coo.col, coo.data))]
    d = tmp_path / "uci"
    d.mkdir()
    (d / "docword.syn.txt").write_text("\n".join(lines) + "\n")
    (d / "vocab.syn.txt").write_text("\n".join(f"word{i}" for i in range(60)) + "\n")
    return d / "docword.syn.txt", X


def test_one_process_reads_a_uci_file_once_for_both_groups(tmp_path):
    """One process reads a UCI file in one pass and splits it: the same held-out and training
    documents, in the same order, as reading each group's documents by themselves (the path of
    an MPI rank), also with a document that has no line."""
    from types import SimpleNamespace

    from algorithms.dpsvi.cli import CorpusPlan

    docword, X = _uci(tmp_path)
    body = docword.read_text().splitlines()
    kept = [ln for ln in body[3:] if not ln.startswith("5 ")]  # document 5 (id 4) loses its lines
    docword.write_text("\n".join(body[:2] + [str(len(kept))] + kept) + "\n")
    args = SimpleNamespace(corpus=str(docword), vocab=None, holdout=0.2, stop_words="english", min_df=1, max_df=1.0,
                           max_features=None)
    one = CorpusPlan(args, 5)
    assert [ids.size for ids, _ in one.read_ahead] == [60, 240]
    (oo, ot), oh = one.heldout(5)
    train = one.shard(0, 1)
    assert not one.read_ahead
    apart = CorpusPlan(args, 5)
    apart.read_ahead = []  # each group read by itself, as under mpiexec
    (ao, at), ah = apart.heldout(5)
    ref = apart.shard(0, 1)
    assert (train != ref).nnz == 0 and train.shape == ref.shape
    for a, b in zip((oh.Xo, oh.Xt, oh.rest, oo, ot), (ah.Xo, ah.Xt, ah.rest, ao, at)):
        assert (a != b).nnz == 0 and a.shape == b.shape
    assert train.shape[0] + oh.shape[0] == 299  # every document but the empty one


def _texts(tmp_path):
    rng = np.random.default_rng(0)
    groups = [["python", "module", "import", "package", "function"],
              ["socket", "network", "server", "client", "request"],
              ["thread", "lock", "queue", "process", "async"]]
    lines = []
    for i in range(120):
        g = groups[i % 3]
        lines.append(" ".join(rng.choice(g, 12)))
    f = tmp_path / "docs.txt"
    f.write_text("\n".join(lines) + "\n")
    return f


def test_cli_module_import_is_light():
    code = ("import sys, argparse; import algorithms.dpsvi.cli as c; "
            "heavy = [m for m in ('numba', 'scipy', 'sklearn', 'algorithms.dpsvi.model') if m in sys.modules]; "
            "import dpsgd.launch; before = set(sys.modules); "
            "p = argparse.ArgumentParser(); c.register(p.add_subparsers()); "
            "heavy += [m for m in set(sys.modules) - before if m.split('.')[0] in ('scipy', 'sklearn')]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_lda_end_to_end_on_text(tmp_path):
    corpus = _texts(tmp_path)
    out = tmp_path / "out"
    r = run(dpsgd_cmd("lda", "--corpus", corpus, "--topics", 3, "--passes", 5, "--batch-size", 20, "--out", out,
                      "--threads", 1, "--min-df", 1, "--max-df", 1.0, "--no-progress", "--eval-every", 0.05,
                      "--eval-initial"))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["checkpoints", "config.json", "metrics.json", "model.npz", "progress.csv",
                                       "topics.txt"]
    m = json.loads((out / "metrics.json").read_text())
    for key in ("heldout_loglik", "perplexity", "npmi", "docs_per_second", "wall_seconds", "bytes_per_push"):
        assert isinstance(m[key], float | int), key
    assert m["n_heldout_documents"] == 12 and m["n_training_documents"] == 108
    assert m["framework"]["staleness_mean"] == 0
    # three planted word groups: each topic's top-5 words come from one group (a random model
    # would mix them), and the model explains held-out words far better than uniform (log 15)
    topics = (out / "topics.txt").read_text().splitlines()
    assert len(topics) == 3 and "python" in r.stdout
    groups = [{"python", "module", "import", "package", "function"}, {"socket", "network", "server", "client", "request"},
              {"thread", "lock", "queue", "process", "async"}]
    for line in topics:
        top5 = set(line.split(":")[1].split()[:5])
        assert any(top5 == g for g in groups), line
    assert m["heldout_loglik"] > -np.log(15) + 0.5
    rows = (out / "progress.csv").read_text().splitlines()
    assert rows[0] == "seconds,updates,documents,heldout_loglik,perplexity" and len(rows) >= 3
    assert rows[1].split(",")[1] == "0"  # --eval-initial: the starting model first
    conf = json.loads((out / "config.json").read_text())
    assert conf["args"]["topics"] == 3 and conf["train_config"]["schedule"] == "power"

    from algorithms.dpsvi import DPSVI

    model = DPSVI.load(out / "model.npz")
    assert model.components_.shape == (3, 15) and "socket" in model.vocabulary_

    # inference on new documents with the model's vocabulary (unknown words are ignored)
    new = tmp_path / "new.txt"
    new.write_text("socket server client unknownword\npython import module\nnothing known here\n")
    r = run(dpsgd_cmd("lda-transform", "--model", out / "model.npz", "--corpus", new, "--out", tmp_path / "t.csv"))
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0] == "doc,topic_0,topic_1,topic_2" and len(lines) == 4
    theta = np.array([[float(v) for v in ln.split(",")[1:]] for ln in lines[1:]])
    np.testing.assert_allclose(theta.sum(1), 1, atol=1e-5)
    assert theta[0].argmax() != theta[1].argmax()


@pytest.mark.parametrize("content, message", [
    (b"3\n4\n2\n1 1 1\n2 7 1\n", r"docword.bad.txt:5: word id 7 outside 1..4"),
    (b"3\n4\n2\n1 1 1\n2 1 x\n", r"docword.bad.txt:5: expected 'docID wordID count'"),
])
def test_lda_bad_corpus_is_one_line_error(tmp_path, content, message):
    (tmp_path / "docword.bad.txt").write_bytes(content)
    (tmp_path / "vocab.bad.txt").write_text("a\nb\nc\nd\n")
    out = tmp_path / "out"
    r = run(dpsgd_cmd("lda", "--corpus", tmp_path / "docword.bad.txt", "--topics", 2, "--out", out, "--no-progress"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    import re

    assert re.search(message, r.stderr), r.stderr
    assert not out.exists()  # nothing written


def test_lda_non_utf8_text_is_one_line_error(tmp_path):
    f = tmp_path / "docs.txt"
    f.write_bytes(b"good line here\nbad \xff\xfe line\n")
    r = run(dpsgd_cmd("lda", "--corpus", f, "--topics", 2, "--out", tmp_path / "o", "--no-progress"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "docs.txt:2: not valid UTF-8" in r.stderr


@pytest.mark.parametrize("mode", ["minibatch", "hogwild"])
def test_lda_thread_modes(tmp_path, mode):
    """--threads 2: one framework thread whose minibatches two threads share (the default), or two
    Hogwild threads each with its own minibatches (two readers)."""
    docword, _ = _uci(tmp_path)
    out = tmp_path / "out"
    r = run(dpsgd_cmd("lda", "--corpus", docword, "--topics", 3, "--passes", 1, "--batch-size", 30, "--out", out,
                      "--threads", 2, "--thread-mode", mode, "--no-progress", "--quiet"))
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["thread_mode"] == mode and m["threads_per_rank"] == 2
    assert m["framework"]["threads_per_worker"] == (1 if mode == "minibatch" else 2)
    assert m["updates_per_pass"] == (9 if mode == "minibatch" else 10)  # 270 docs: ceil(270/30), 2 x ceil(135/30)
    assert m["heldout_loglik"] > -np.log(60) + 0.3
    rows = (out / "progress.csv").read_text().splitlines()[1:]
    assert all(int(r.split(",")[1]) > 0 for r in rows)  # without --eval-initial: not the starting model


def test_lda_run_does_not_load_scikit_learn(tmp_path):
    """A UCI (or .npz) corpus is trained, evaluated and saved without scikit-learn in the process
    (~86 MB of RSS per rank); its model.npz loads as the estimator with the run's parameters."""
    docword, _ = _uci(tmp_path)
    out = tmp_path / "out"
    code = ("import sys; from dpsgd.launch import main; "
            f"rc = main(['lda', '--corpus', {str(docword)!r}, '--topics', '3', '--passes', '1', '--batch-size', '30', "
            f"'--out', {str(out)!r}, '--threads', '2', '--rule', 'asgd', '--seed', '7', '--no-progress', '--quiet']); "
            "print(rc, sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn')[:3])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("0 []"), r.stdout + r.stderr
    from algorithms.dpsvi import DPSVI

    model = DPSVI.load(out / "model.npz")
    assert model.components_.shape == (3, 60) and model.vocabulary_[59] == "word59"
    assert (model.n_components, model.rule, model.random_state, model.total_samples) == (3, "asgd", 7, 270)
    # 270 documents, batch 30, the default thread mode (the two threads share each minibatch): 9 updates
    assert model.doc_topic_prior_ == model.topic_word_prior_ == 1 / 3 and model.n_batch_iter_ == 10


@pytest.mark.mpi
def test_lda_under_mpiexec_three_ranks(tmp_path, mpi):
    """Rank 0 serves lambda, ranks 1-2 stream only their shard of a UCI file; each worker's two
    threads share its minibatches (lazy-decay layout under MPI)."""
    docword, _ = _uci(tmp_path)
    out = tmp_path / "out"
    r = mpi(3, ["-m", "dpsgd.launch", "lda", "--corpus", docword, "--topics", 3, "--passes", 4, "--batch-size", 30,
                "--out", out, "--threads", 2, "--thread-mode", "minibatch", "--no-progress", "--quiet"], timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["sparse_push"] and m["threads_per_rank"] == 2
    assert m["framework"]["n_workers"] == 2 and m["framework"]["pushes"] > 0
    assert m["n_training_documents"] == 270
    assert m["framework"]["rejected_pushes"] == 0
    assert m["heldout_loglik"] > -np.log(60) + 0.3  # far better than uniform over the 60 words
    # no rank holds the corpus: NPMI's counts from the workers' shards and the root's held-out
    # documents, summed on the root, are the whole corpus's
    from algorithms.dpsvi import corpus as C
    from algorithms.dpsvi.evaluate import npmi

    comp = np.load(out / "model.npz")["components"]
    whole = npmi(comp / comp.sum(axis=1, keepdims=True), C.load_corpus(str(docword)).X, 10)
    assert m["npmi_reference"].startswith("whole corpus") and m["npmi"] == pytest.approx(whole, abs=1e-9)


@pytest.mark.mpi
@pytest.mark.parametrize("sparse", ["on", "off"])
def test_lda_sparse_pushes_carry_the_minibatch_words(tmp_path, mpi, sparse):
    """Bytes per push scale with the words a minibatch touched (lazy decay), not with V."""
    out = tmp_path / "out"
    r = mpi(3, ["-m", "dpsgd.launch", "lda", "--corpus", ROOT / "benchmarks/data/pydoc.npz", "--topics", 5,
                "--passes", 0.2, "--batch-size", 64, "--out", out, "--threads", 1, "--no-progress", "--quiet",
                "--sparse-push", sparse], timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((out / "metrics.json").read_text())
    f = m["framework"]
    dense = f["dense_push_bytes"]
    assert m["sparse_push"] is (sparse == "on") and f["rejected_pushes"] == 0
    if sparse == "on":
        # 64 documents touch ~1k of the 9.1k words: a push is a fraction of the dense 4 (V + 2) K bytes
        assert f["sparse_pushes"] == f["pushes"] and m["bytes_per_push"] < dense / 2.5
    else:
        assert f["sparse_pushes"] == 0 and m["bytes_per_push"] == dense
    assert m["bytes_per_pull"] == dense
    assert m["heldout_loglik"] > -8.5  # uniform over the words would be log(1/9117) = -9.1


@pytest.mark.mpi
@pytest.mark.parametrize("ranks,extra", [(4, ["--n-servers", 2]), (3, ["--overlap"])])
def test_lda_sparse_updates_where_a_dense_one_is_needed(tmp_path, mpi, ranks, extra):
    """A worker thread's update comes as dpsgd.SparseBlocks; with two server shards (each takes its
    slice) the worker scatters it into a dense one first, a pipelined worker (--overlap) applies
    it to its buffer and sends it as it is: every push arrives, sparse, and the model learns."""
    out = tmp_path / "out"
    r = mpi(ranks, ["-m", "dpsgd.launch", "lda", "--corpus", ROOT / "benchmarks/data/pydoc.npz", "--topics", 5,
                    "--passes", 0.2, "--batch-size", 64, "--out", out, "--threads", 1, "--no-progress", "--quiet",
                    "--sparse-push", "on", *extra], timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((out / "metrics.json").read_text())
    f = m["framework"]
    assert m["sparse_push"] and f["rejected_pushes"] == 0 and f["n_servers"] == ranks - 2
    assert f["sparse_pushes"] == f["pushes"] * f["n_servers"]  # every push, to every shard
    assert m["heldout_loglik"] > -8.5


def test_sparse_layout_matches_the_dense_one():
    """One thread, same seed: the lazy-decay layout gives the dense SVI's lambda (float32 rounding aside)."""
    import dpsgd
    from algorithms.dpsvi.corpus import synthetic_lda
    from algorithms.dpsvi.svi import SVIAlgorithm

    X, _ = synthetic_lda(400, 300, 5, doc_length=40, alpha=0.2, eta=0.05, seed=1)
    X = X.tocsr().astype(np.float32)
    lams = []
    for sparse in (False, True):
        alg = SVIAlgorithm(X, 300, 5, alpha=0.2, eta=0.2, total_docs=400, batch_size=40, sparse_push=sparse)
        cfg = dpsgd.TrainConfig(rule=dpsgd.RuleConfig("asgd"), lr=1.0, schedule="power", tau0=11, kappa=0.7,
                                total_updates=30, threads=1, progress=False, final_eval=False)
        lams.append(alg.lambda_of(dpsgd.train(alg, cfg).params).reshape(300, 5))
    dense, lazy = lams
    np.testing.assert_allclose(lazy.sum(axis=0), dense.sum(axis=0), rtol=1e-3)
    assert np.median(np.abs(lazy - dense) / dense) < 1e-4
    # the E-step stops at a tolerance: a few entries take another iteration path, none far off
    assert np.quantile(np.abs(lazy - dense) / dense, 0.99) < 0.05


def test_sparse_push_needs_a_linear_rule():
    from algorithms.dpsvi.svi import choose_sparse_push

    assert choose_sparse_push("auto", "dc-asgd-a", [0.1]) is False
    assert choose_sparse_push("auto", "asgd", [0.1] * 10) is True
    assert choose_sparse_push("auto", "asgd", [0.1] * 10, distributed=False) is False  # nothing to send
    assert choose_sparse_push("auto", "asgd", [0.5] * 1000) is False  # exp(693): beyond float32
    with pytest.raises(ValueError, match="linear server rule"):
        choose_sparse_push(True, "dc-asgd-c", [0.1])
