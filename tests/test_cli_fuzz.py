"""Property-based: random command lines give a valid configuration or a clear error, nothing else."""

import contextlib
import io

from hypothesis import given, settings, strategies as st

from dpsgd.config import ConfigError, TrainConfig
from dpsgd.launch import build_parser, config_from_args

OPTIONS = ["--rule", "--lam", "--momentum", "--lr", "--schedule", "--local-steps", "--threads", "--n-servers",
           "--max-staleness", "--max-bad-pushes", "--max-seconds", "--worker-timeout", "--checkpoint-every",
           "--seed", "--updates", "--batch-size", "--problem", "--eval-every"]
VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1", "2.5", "nan", "inf", "-inf", "1e309", "", "asgd", "dc-asgd-a", "ssgd",
                     "power", "linear", "softmax", "mlp", "x" * 50, "0x10", "1_000", "--", "é", "\x00"]),
    st.integers(-10**12, 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)
ARGV = st.lists(st.tuples(st.sampled_from(OPTIONS), VALUES), max_size=6).map(
    lambda pairs: ["run"] + [x for pair in pairs for x in pair])


PARSER = build_parser()


@settings(max_examples=1500, deadline=None)
@given(ARGV)
def test_random_command_lines(argv):
    parser = PARSER
    sink = io.StringIO()
    try:
        with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
            args = parser.parse_args(argv)
    except SystemExit as e:
        assert e.code == 2  # argparse's one-line usage error
        return
    try:
        cfg = config_from_args(args, total_updates=args.updates, out=None)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(cfg, TrainConfig)
    assert cfg.lr > 0 and (cfg.threads is None or cfg.threads >= 1)
