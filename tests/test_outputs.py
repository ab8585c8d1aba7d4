"""Data loss first: a compile never deletes, renames or overwrites what it did not create, locks
OUT, and leaves the previous OUT exactly as it was when it fails."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from homunculus import outputs
from homunculus.cli import app
from homunculus.compile import CompileOptions, compile_plan
from homunculus.errors import DataError
from homunculus.frontend.yaml_spec import plan_from_yaml
from homunculus.outputs import (
    MARKER,
    OutPaths,
    OutputError,
    acquire_lock,
    check_out_dir,
    recover,
    release_lock,
    write_marker,
)

from conftest import spec_text, tree, write_spec

runner = CliRunner()


def compile_cli(*args: str) -> object:
    return runner.invoke(app, ["compile", *args, "--no-progress", "--trials", "2"])


@pytest.fixture
def project(tmp_path, example_csv) -> Path:
    """A user's directory: a spec, its data and an unrelated file."""
    write_spec(tmp_path / "s.yaml", spec_text(example_csv.name, algorithms="[dt]"))
    (tmp_path / "notes.txt").write_text("mine\n")
    return tmp_path


@pytest.mark.parametrize("out", [".", "", "./", "sub/..", "{cwd}"])
def test_current_directory_is_refused_and_untouched(project, monkeypatch, out) -> None:
    monkeypatch.chdir(project)
    before = tree(project)
    result = compile_cli("s.yaml", "-o", out.format(cwd=project))
    assert result.exit_code == 2, result.output
    assert "current directory" in result.output
    assert tree(project) == before


def test_parent_of_cwd_spec_or_data_is_refused(project, monkeypatch) -> None:
    work = project / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = tree(project)
    result = compile_cli("../s.yaml", "-o", "..")
    assert result.exit_code == 2 and "parent of the current directory" in result.output
    monkeypatch.chdir("/")
    result = compile_cli(str(project / "s.yaml"), "-o", str(project))
    assert result.exit_code == 2 and "contains the input" in result.output
    assert tree(project) == before


def test_files_links_and_special_paths_are_refused(project, monkeypatch) -> None:
    monkeypatch.chdir(project)
    (project / "adir").mkdir()
    os.symlink(project / "adir", project / "link")
    os.mkfifo(project / "fifo")
    before = tree(project)
    for out, why in [("notes.txt", "is a file"), ("s.yaml", "is a file"),
                     ("link", "symbolic link"), ("fifo", "FIFO"), ("/dev/null", "special"),
                     ("/proc/self/out", "special"), ("/sys/out", "special"), ("/", "root"),
                     ("x" * 300, "too long"), ("d/" * 2000 + "out", "too long")]:
        result = compile_cli("s.yaml", "-o", out)
        assert result.exit_code == 2, (out, result.output)
        assert why in result.output, (out, result.output)
        assert "Traceback" not in result.output
    assert tree(project) == before


def test_foreign_directories_are_refused_and_untouched(project, monkeypatch) -> None:
    monkeypatch.chdir(project)
    home = project / "home"
    (home / "docs").mkdir(parents=True)
    (home / "docs" / "thesis.tex").write_text("x")
    (home / "report.json").write_text("{}")  # looks like ours, but thesis.tex is not
    before = tree(project)
    result = compile_cli("s.yaml", "-o", "home")
    assert result.exit_code == 2 and "not made by Homunculus" in result.output
    assert tree(project) == before


def test_a_file_added_to_a_compiled_out_blocks_the_next_compile(project, monkeypatch) -> None:
    monkeypatch.chdir(project)
    assert compile_cli("s.yaml", "-o", "out").exit_code == 0
    marker = json.loads((project / "out" / MARKER).read_text())
    assert marker["state"] == "complete" and "report.json" in marker["files"]
    (project / "out" / "p4" / "my_edits.p4").write_text("// mine")
    before = tree(project)
    result = compile_cli("s.yaml", "-o", "out")
    assert result.exit_code == 2 and "my_edits.p4" in result.output
    assert tree(project) == before
    (project / "out" / "p4" / "my_edits.p4").unlink()
    assert compile_cli("s.yaml", "-o", "out").exit_code == 0


def test_recompile_replaces_only_out_and_leaves_nothing_beside_it(project, monkeypatch) -> None:
    monkeypatch.chdir(project)
    assert compile_cli("s.yaml", "-o", "out").exit_code == 0
    siblings = sorted(p.name for p in project.iterdir())
    result = runner.invoke(app, ["compile", "s.yaml", "-o", "out", "--no-progress",
                                 "--trials", "3", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in project.iterdir()) == siblings  # no lock, staging or backup
    report = json.loads((project / "out" / "report.json").read_text())
    assert report["search"]["seed"] == 5 and len(report["trials"]) == 3
    assert json.loads((project / "out" / MARKER).read_text())["generation"] == 2


def test_out_of_an_earlier_version_is_recognised(project, monkeypatch) -> None:
    monkeypatch.chdir(project)
    old = project / "out"
    (old / "p4").mkdir(parents=True)
    (old / "p4" / "x.p4").write_text("old")
    (old / "report.json").write_text("{}")
    (old / "study.db").write_bytes(b"")
    (project / ".out.staging.ab_cd123").mkdir()  # a dead compile of that version
    (project / ".out.staging.ab_cd123" / "report.json").write_text("{}")
    assert compile_cli("s.yaml", "-o", "out").exit_code == 0
    assert not (old / "p4" / "x.p4").exists() and (old / MARKER).is_file()
    assert not (project / ".out.staging.ab_cd123").exists()


def test_a_failed_compile_leaves_the_previous_out_exactly(project, monkeypatch) -> None:
    monkeypatch.chdir(project)
    assert compile_cli("s.yaml", "-o", "out").exit_code == 0
    before = tree(project)
    csv = project / "iot.csv"
    csv.write_text(csv.read_text().replace("\n", "\n,,,,,,,\n", 1))  # a row without a label
    result = compile_cli("s.yaml", "-o", "out")
    assert result.exit_code == 2 and "label column 'device' is missing" in result.output
    after = tree(project)
    assert {k: v for k, v in after.items() if k != "iot.csv"} == \
        {k: v for k, v in before.items() if k != "iot.csv"}
    result = compile_cli("s.yaml", "-o", "new/deeper/out")
    assert result.exit_code == 2 and not (project / "new").exists()  # created parents removed


def test_a_second_compile_of_the_same_out_is_refused_with_the_pid(project, monkeypatch) -> None:
    monkeypatch.chdir(project)
    paths = OutPaths(project / "out")
    fd = acquire_lock(paths)  # as another compile would hold it
    try:
        before = tree(project)
        result = compile_cli("s.yaml", "-o", "out")
        assert result.exit_code == 2
        assert f"in use by pid {os.getpid()}" in result.output.replace("\n", " ")
        assert tree(project) == before
    finally:
        release_lock(paths, fd)
    assert not paths.lock.exists()
    assert compile_cli("s.yaml", "-o", "out").exit_code == 0


def test_a_foreign_lock_or_partial_name_is_never_overwritten(project) -> None:
    paths = OutPaths(project / "out")
    paths.lock.write_text("my shopping list\n")
    with pytest.raises(OutputError, match="not a Homunculus lock file"):
        acquire_lock(paths)
    assert paths.lock.read_text() == "my shopping list\n"
    paths.lock.unlink()
    paths.partial.mkdir()
    (paths.partial / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="not made by Homunculus"):
        recover(paths)
    assert (paths.partial / "keep.txt").read_text() == "x"


def _complete(directory: Path, generation: int, content: str) -> None:
    directory.mkdir()
    (directory / "report.json").write_text(content)
    write_marker(directory, generation=generation, state="complete", pid=1,
                 files=["report.json"])


@pytest.mark.parametrize("state,expected", [
    ("old only", "previous"),  # killed between the two renames of the fallback commit
    ("old + complete partial", "new"),
    ("complete partial", "new"),  # killed after the workspace was marked complete
    ("leftover after exchange", "new"),  # killed after the swap, before the old was removed
    ("old + out", "new"),  # killed after the second rename, before removing the old
])
def test_recovery_after_a_crash_in_a_commit(tmp_path, state, expected) -> None:
    paths = OutPaths(tmp_path / "out")
    if state == "old only":
        _complete(paths.old, 1, "previous")
        _complete(paths.partial, 2, "new")
        (paths.partial / MARKER).write_text(json.dumps(
            {**json.loads((paths.partial / MARKER).read_text()), "state": "partial"}))
    elif state == "old + complete partial":
        _complete(paths.old, 1, "previous")
        _complete(paths.partial, 2, "new")
    elif state == "complete partial":
        _complete(paths.out, 1, "previous")
        _complete(paths.partial, 2, "new")
    elif state == "leftover after exchange":
        _complete(paths.out, 2, "new")
        _complete(paths.partial, 1, "previous")
    else:
        _complete(paths.out, 2, "new")
        _complete(paths.old, 1, "previous")
    recover(paths)
    assert (paths.out / "report.json").read_text() == expected
    assert not paths.old.exists()
    if state != "old only":
        assert not paths.partial.exists()


def test_commit_without_rename_exchange(project, monkeypatch) -> None:
    monkeypatch.chdir(project)
    monkeypatch.setattr(outputs, "exchange", lambda a, b: False)
    assert compile_cli("s.yaml", "-o", "out").exit_code == 0
    assert compile_cli("s.yaml", "-o", "out").exit_code == 0
    assert sorted(p.name for p in project.iterdir() if p.name.startswith(".")) == []


def test_check_out_dir_accepts_new_empty_and_own_directories(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert check_out_dir(Path("a/b")) == tmp_path / "a" / "b"
    (tmp_path / "empty").mkdir()
    assert check_out_dir(Path("empty")) == tmp_path / "empty"
    with pytest.raises(OutputError, match="contains the input"):
        check_out_dir(Path("a"), [Path("a/b/data.csv")])


def test_compile_plan_refuses_before_loading_data(tmp_path, example_csv, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    plan = plan_from_yaml(write_spec(tmp_path / "s.yaml", spec_text(example_csv)))
    plan.load_data = lambda: (_ for _ in ()).throw(DataError("loaded"))  # must not be reached
    with pytest.raises(OutputError):
        compile_plan(plan, CompileOptions(Path("."), trials=1, progress=False))
