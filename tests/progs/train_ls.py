"""A least-squares run used by the MPI tests (fault injection through options)."""

import argparse
import json
import os
import sys

import numpy as np

import dpsgd


class LS(dpsgd.Algorithm):
    def __init__(self, d=40, n=2000, nan_updates=0, raise_worker=None, silent_worker=None, seed=0):
        r = np.random.default_rng(seed)
        self.X = r.normal(size=(n, d)).astype(np.float32)
        self.w_true = r.normal(size=d).astype(np.float32)
        self.y = self.X @ self.w_true
        self.nan_updates = nan_updates
        self.raise_worker = raise_worker
        self.silent_worker = silent_worker

    #: ranks below this are server shards: init_params on another rank is an error (None: no check)
    servers_only = None
    #: init_params returns float64 (a ConfigError of the framework)
    bad_init = False

    def init_params(self, rng):
        if self.servers_only is not None and int(os.environ.get("PMI_RANK", "0")) >= self.servers_only:
            raise RuntimeError("init_params called on a worker rank")
        return np.zeros(self.X.shape[1], np.float64 if self.bad_init else np.float32)

    def make_thread_state(self, ctx):
        return ctx.shard(len(self.X))

    def compute_update(self, w, rows, ctx):
        if self.raise_worker is not None and ctx.worker == self.raise_worker and ctx.step == 20:
            raise RuntimeError("injected failure")
        if self.silent_worker is not None and ctx.worker == self.silent_worker:
            import time

            # a worker that hangs without dying, after its hello: at its first update, since a worker
            # that started late used to find the budget spent by the other before its 20th update
            time.sleep(3600)
        i = ctx.rng.choice(rows, 16)
        g = (self.X[i].T @ (self.X[i] @ w - self.y[i]) / 16).astype(np.float32)
        if ctx.worker == 0 and ctx.step < self.nan_updates:
            g[0] = np.nan
        return g

    def evaluate(self, w):
        return {"dist": float(np.linalg.norm(w - self.w_true))}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rule", default="dc-asgd-a")
    p.add_argument("--n-servers", type=int, default=1)
    p.add_argument("--updates", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--local-steps", type=int, default=1)
    p.add_argument("--overlap", action="store_true")
    p.add_argument("--local-optimizer", default="sgd")
    p.add_argument("--nan-updates", type=int, default=0)
    p.add_argument("--raise-worker", type=int, default=None)
    p.add_argument("--max-bad-pushes", type=int, default=10)
    p.add_argument("--silent-worker", type=int, default=None)
    p.add_argument("--worker-timeout", type=float, default=120.0)
    p.add_argument("--max-staleness", type=int, default=None)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--checkpoint-every", type=float, default=None)
    p.add_argument("--pid-dir", default=None, help="each rank writes rank<r>.pid here")
    p.add_argument("--resume", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--check-init", action="store_true", help="init_params fails on a worker rank")
    p.add_argument("--bad-init", action="store_true", help="init_params returns float64")
    a = p.parse_args()
    if a.pid_dir:
        rank = os.environ.get("PMI_RANK", "0")
        with open(os.path.join(a.pid_dir, f"rank{rank}.pid"), "w") as f:
            f.write(str(os.getpid()))
    cfg = dpsgd.TrainConfig(rule=dpsgd.RuleConfig(a.rule), lr=0.05, total_updates=a.updates, threads=a.threads,
                            local_steps=a.local_steps, overlap=a.overlap, local_optimizer=a.local_optimizer,
                            n_servers=a.n_servers, max_bad_pushes=a.max_bad_pushes,
                            max_staleness=a.max_staleness, worker_timeout=a.worker_timeout, checkpoint_dir=a.checkpoint_dir, checkpoint_every=a.checkpoint_every, resume=a.resume,
                            progress=False)
    alg = LS(nan_updates=a.nan_updates, raise_worker=a.raise_worker, silent_worker=a.silent_worker)
    alg.servers_only = a.n_servers if a.check_init else None
    alg.bad_init = a.bad_init
    res = dpsgd.train(alg, cfg)
    if res.is_root:
        m = res.metrics
        out = {k: m[k] for k in ("pushes", "total_updates", "rejected_pushes", "reject_reasons", "staleness_mean",
                                 "staleness_max", "staleness_hist", "n_workers", "final", "dropped_stale_pushes",
                                 "local_updates_per_worker", "cpu_seconds_per_rank", "peak_rss_mb_per_rank",
                                 "first_update_unix", "wall_seconds")}
        out["n_params"] = int(res.params.size)
        if a.out:  # what a replay needs: the push order, the first pulls, the final model
            os.makedirs(a.out, exist_ok=True)
            np.save(os.path.join(a.out, "params.npy"), res.params)
            with open(os.path.join(a.out, "replay.json"), "w") as f:
                json.dump({k: m.get(k) for k in ("push_workers", "hello_versions", "staleness_hist")}, f)
        print("RESULT " + json.dumps(out))
    sys.exit(0)
