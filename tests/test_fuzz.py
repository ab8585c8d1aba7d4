"""The fuzz suite (kept small for CI; bench/fuzz.py runs it long): spec, capture and command-line
variants end normally or with a HomunculusError / exit 2 and one message; never a traceback,
never past a time bound, never a change outside OUT."""

from __future__ import annotations

import os
import random
import tempfile
import warnings
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from homunculus.cli import app

from fuzzing import (
    BASE_SPEC,
    base_table,
    check_capture,
    cli_arguments,
    outside_out,
    snapshot,
    time_bound,
    validate_spec,
    write_capture_case,
    write_spec_case,
    yaml_text,
)

runner = CliRunner()
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@settings(FUZZ, max_examples=150)
@given(rng=st.randoms(use_true_random=False))
def test_spec_variants_fail_cleanly_before_the_search(rng: random.Random) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        case = write_spec_case(root, rng)
        before = snapshot(root)
        with warnings.catch_warnings(), time_bound(60):
            warnings.simplefilter("ignore")
            validate_spec(case.spec)  # raises anything but a HomunculusError
        assert snapshot(root) == before, "validation wrote or changed a file"


@settings(FUZZ, max_examples=4)
@given(rng=st.randoms(use_true_random=False))
def test_spec_variants_compile_or_exit_2_and_touch_only_out(rng: random.Random) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for attempt in range(30):  # prefer a variant that passes validation: a real compile
            work = root / str(attempt)
            work.mkdir()
            case = write_spec_case(work, rng)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if validate_spec(case.spec) == "ok":
                    break
        root = case.spec.parent
        before = snapshot(root)
        with time_bound(300):
            result = runner.invoke(app, ["compile", str(case.spec), "-o", str(root / "out"),
                                         "--no-progress", "--trials", "1"])
        assert result.exit_code in (0, 2), (case.kind, result.output, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert snapshot(root, outside_out) == {k: v for k, v in before.items()
                                               if not outside_out(k)}
        assert not [p for p in root.iterdir() if p.name.startswith(".out.")]


@settings(FUZZ, max_examples=400)
@given(rng=st.randoms(use_true_random=False))
def test_capture_variants_read_or_fail_cleanly(rng: random.Random) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path, _ops = write_capture_case(Path(tmp), rng)
        with time_bound(30):
            check_capture(path)


@settings(FUZZ, max_examples=60)
@given(rng=st.randoms(use_true_random=False))
def test_command_lines_exit_0_or_2_with_a_message(rng: random.Random) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "spec.yaml").write_text(yaml_text(BASE_SPEC))
        base_table().to_csv(root / "data.csv", index=False)
        os.mkfifo(root / "fifo.csv")
        args = cli_arguments(rng, root)
        before = snapshot(root)
        cwd = os.getcwd()
        os.chdir(root)
        try:
            with time_bound(300):
                result = runner.invoke(app, args)
        finally:
            os.chdir(cwd)
        assert result.exit_code in (0, 2), (args, result.output, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit), args
        assert "Traceback" not in result.output
        if result.exit_code == 2 and args[0] not in ("nope", "--bogus"):
            assert "error" in result.output.lower() or "Usage" in result.output, args
        after = snapshot(root)
        changed = {k for k, v in after.items() if before.get(k) != v} | (set(before) - set(after))
        allowed = {Path(a).relative_to(root).as_posix() for a in args
                   if a.startswith(str(root) + "/")}  # files the command was asked to write
        assert all(outside_out(c) or any(c == a or c.startswith(a + "/") for a in allowed)
                   for c in changed), (args, changed)
