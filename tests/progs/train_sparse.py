"""A run whose updates touch few parameter blocks (sparse pushes), used by the MPI tests."""

import argparse
import json
import sys

import numpy as np

import dpsgd


class Rows(dpsgd.Algorithm):
    """Pull every row of W (n_rows x B) towards its target; an update touches ``per_update`` rows."""

    def __init__(self, n_rows=500, block=8, per_update=5, seed=0, push_block=True, blocks=False):
        self.target = np.random.default_rng(seed).normal(size=(n_rows, block)).astype(np.float32)
        self.per_update = per_update
        #: return the update as dpsgd.SparseBlocks (the touched rows only), not a dense g
        self.blocks = blocks
        if push_block:
            self.push_block = block

    def init_params(self, rng):
        return np.zeros(self.target.size, np.float32)

    def make_thread_state(self, ctx):
        if self.blocks:
            return np.empty(self.target.size + len(self.target), np.float32)
        return np.zeros(self.target.size, np.float32), []

    def compute_update(self, w, state, ctx):
        if self.blocks:
            rows = np.sort(ctx.rng.choice(len(self.target), self.per_update, replace=False))
            nb, B = rows.size, self.target.shape[1]
            state[:nb].view(np.int32)[:] = rows
            state[nb:nb * (B + 1)] = (w.reshape(self.target.shape)[rows] - self.target[rows]).ravel()
            return dpsgd.SparseBlocks(state, nb, B)
        g, last = state
        g.reshape(self.target.shape)[last] = 0
        rows = ctx.rng.choice(len(self.target), self.per_update, replace=False)
        W = w.reshape(self.target.shape)
        g.reshape(self.target.shape)[rows] = W[rows] - self.target[rows]
        state[1][:] = rows
        return g

    def evaluate(self, w):
        return {"dist": float(np.abs(w.reshape(self.target.shape) - self.target).max())}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rule", default="asgd")
    p.add_argument("--n-servers", type=int, default=1)
    p.add_argument("--updates", type=int, default=3000)
    p.add_argument("--local-steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dense", action="store_true", help="no push_block: dense pushes")
    p.add_argument("--blocks", action="store_true", help="compute_update returns dpsgd.SparseBlocks")
    p.add_argument("--per-update", type=int, default=5, help="rows an update touches (of 500)")
    a = p.parse_args()
    cfg = dpsgd.TrainConfig(rule=dpsgd.RuleConfig(a.rule), lr=0.5, total_updates=a.updates, threads=a.threads,
                            local_steps=a.local_steps, n_servers=a.n_servers, progress=False)
    res = dpsgd.train(Rows(push_block=not a.dense, blocks=a.blocks, per_update=a.per_update), cfg)
    if res.is_root:
        keys = ("pushes", "rejected_pushes", "final", "push_bytes_mean", "pull_bytes_mean", "sparse_pushes",
                "dense_push_bytes", "n_workers")
        print("RESULT " + json.dumps({k: res.metrics.get(k) for k in keys}))
    sys.exit(0)
