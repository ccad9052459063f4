"""Sessions: `tests` (fast suite), `slow` (long end-to-end tests), `bench` (the main job),
`speed` (the decode-speed benchmark: AR vs speculative tokens/s and the step split), `gpu`
(one-command validation on an NVIDIA GPU), `lint`."""

import os

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

# The CPU wheel of this version lies on the project's machines' disk; an unpinned
# torch would pull a multi-GB CUDA build there. On a GPU machine the same pin from
# PyPI is a CUDA build. Override with SCYLLA_TORCH="torch==X" (or "" to keep yours).
TORCH = os.environ.get("SCYLLA_TORCH", "torch==2.13.0")


def _install(session: nox.Session, extras: str = "test") -> None:
    if TORCH:
        session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    _install(session)
    session.run("pytest", "-m", "not slow and not bench", *session.posargs)


@nox.session(python="3.11")
def slow(session: nox.Session) -> None:
    _install(session)
    session.run("pytest", "-m", "slow", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """The main job: quick profile, default sweep, HTML report, micro-benchmarks, regression checks.

    `nox -s bench -- --update-baseline` refreshes the committed baselines; other options:
    `nox -s bench -- --help` (reports/bench.py).
    """
    _install(session)
    session.run("python", "-m", "reports.bench", *session.posargs)


@nox.session(python="3.11")
def speed(session: nox.Session) -> None:
    """Where a decode step's time goes: weight-read floor, verify(n), one draft level per method,
    the bookkeeping share (reports/speed.py); then AR vs speculative decode at batch 1
    (tests/benchmarks/test_decode_speed.py). Options go to reports/speed.py (`-- --help`).

    SCYLLA_BENCH_DTYPE=float32 fixes the second part's dtype (default: auto, as the first).
    """
    _install(session)
    session.run("python", "-m", "reports.speed", *session.posargs)
    session.run("pytest", "tests/benchmarks/test_decode_speed.py", "-m", "bench", "-s", "-p", "no:cacheprovider",
                "--benchmark-columns=min,median,rounds")


@nox.session(python="3.11")
def gpu(session: nox.Session) -> None:
    """Validate on an NVIDIA GPU: profile (SM read kernel, bf16 GEMM sweep), the bf16 lossless
    check, a sweep at batch 1 to 64, the report, one summary against the datasheet (reports/gpu.py).
    Without a GPU it says so and fails; `nox -s gpu -- --device cpu` checks the plumbing."""
    _install(session)
    session.run("python", "-m", "reports.gpu", *session.posargs)
