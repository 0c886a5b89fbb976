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
                      "--threads", 1, "--min-df", 1, "--max-df", 1.0, "--no-progress", "--eval-every", 0.05))
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


@pytest.mark.mpi
def test_lda_under_mpiexec_three_ranks(tmp_path, mpi):
    """Rank 0 serves lambda, ranks 1-2 stream only their shard of a UCI file."""
    docword, _ = _uci(tmp_path)
    out = tmp_path / "out"
    r = mpi(3, ["-m", "dpsgd.launch", "lda", "--corpus", docword, "--topics", 3, "--passes", 4, "--batch-size", 30,
                "--out", out, "--threads", 1, "--no-progress", "--quiet"], timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["framework"]["n_workers"] == 2 and m["framework"]["pushes"] > 0
    assert m["n_training_documents"] == 270
    assert m["framework"]["rejected_pushes"] == 0
    assert m["heldout_loglik"] > -np.log(60) + 0.3  # far better than uniform over the 60 words
