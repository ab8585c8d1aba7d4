"""The fuzz suite (kept small for CI; bench/fuzz.py runs it long): spec, capture and command-line
variants end normally or with a HomunculusError / exit 2 and one message; never a traceback,
never past a time bound, never a change outside OUT (tests/fuzzing.py has the mutators and the
checks)."""

from __future__ import annotations

import random
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from fuzzing import capture_variant, cli_variant, compile_variant, spec_variant, time_bound
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def run(variant: Callable[[random.Random, Path], str], rng: random.Random, bound: float) -> None:
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), time_bound(bound):
        warnings.simplefilter("ignore")
        variant(rng, Path(tmp))


@settings(FUZZ, max_examples=150)
@given(rng=st.randoms(use_true_random=False))
def test_spec_variants_fail_cleanly_before_the_search(rng: random.Random) -> None:
    run(spec_variant, rng, 60)


@settings(FUZZ, max_examples=4)
@given(rng=st.randoms(use_true_random=False))
def test_spec_variants_compile_or_exit_2_and_touch_only_out(rng: random.Random) -> None:
    run(compile_variant, rng, 300)


@settings(FUZZ, max_examples=400)
@given(rng=st.randoms(use_true_random=False))
def test_capture_variants_read_or_fail_cleanly(rng: random.Random) -> None:
    run(capture_variant, rng, 30)


@settings(FUZZ, max_examples=60)
@given(rng=st.randoms(use_true_random=False))
def test_command_lines_exit_0_or_2_with_a_message(rng: random.Random) -> None:
    run(cli_variant, rng, 300)
