"""The C target: generated libraries agree exactly with the quantised models and the twin."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homunculus.data.dataset import FeatureDecl, make_dataset
from homunculus.ir.cpu import CpuProgram
from homunculus.ir.dense import QMLP, DenseLayer
from homunculus.ir.pipeline import VerdictKind, VerdictPlan
from homunculus.ir.quantised import FeatureBins, QLookupSum, QTree, QTreeEnsemble
from homunculus.models.base import TrainedModel, all_families
from homunculus.passes.lower_cpu import lower_cpu
from homunculus.targets.c import CLibrary, CompileError, CTarget, compile_executable, emit_c
from homunculus.targets.c.build import compile_shared
from homunculus.targets.c.profiles import CProfile
from homunculus.targets.c.twin import reference

FAMILIES = sorted(all_families())
TREES = ("dt", "rf", "xgb")
HOSTILE = "*/ #include <x> int main(){}\n/* \\ \r"
VERDICT_KEYS = ("verdict_port", "verdict_drop", "verdict_mark", "verdict_dscp")
DSCP_PLAN = VerdictPlan(kind=VerdictKind.DSCP, ports={0: 3, 1: 5}, dscp={1: 46})


def build_program(trained: TrainedModel, features, labels, verdict: VerdictPlan) -> CpuProgram:
    """The CPU program of a trained model."""
    return lower_cpu(trained.quantised, tuple(features), tuple(labels), verdict,
                     trained.winner_to_class)


def train(family: str, widths, x, y, seed: int = 0, names=None, label=lambda v: f"c{v}"):
    names = names or [f"x{i}" for i in range(len(widths))]
    feats = [FeatureDecl(n, w) for n, w in zip(names, widths, strict=True)]
    labels = [label(v) for v in y]
    ds = make_dataset(feats, x, labels, x[:2], labels[:2], "c-test")
    fam = all_families()[family]
    trained = fam.train(fam.default_params(), ds.x_train, ds.y_train, ds.n_classes, ds.widths,
                        seed)
    return ds, trained


def emit_and_load(program: CpuProgram, out_dir: Path, name: str = "m",
                  tree_code: str = "auto") -> CLibrary:
    target = CTarget(CProfile(tree_code=tree_code))
    return CLibrary(target.emit(program, out_dir, name)["c_library"])


def extreme_rows(widths: list[int]) -> np.ndarray:
    """0, all ones, and values above each width (masked by the library and the twin)."""
    ones = [(1 << w) - 1 for w in widths]
    return np.array([[0] * len(widths), ones, [o + 1 for o in ones], [(1 << 32) - 1] * len(widths),
                     [(o << 1) | 1 for o in ones], [1 << w for w in widths]], dtype=np.int64)


def masked(x: np.ndarray, widths: list[int]) -> np.ndarray:
    return x & np.array([(1 << w) - 1 for w in widths])


def assert_agrees(lib: CLibrary, program: CpuProgram, x: np.ndarray,
                  expected: np.ndarray | None = None) -> None:
    """Batch, single and verdict calls equal the reference (and ``expected`` classes)."""
    ref = reference(program, x)
    batch = lib.classify_batch(x)
    np.testing.assert_array_equal(batch, ref.class_index)
    np.testing.assert_array_equal(lib.classify(x), batch)
    got = lib.classify_verdict(x)
    np.testing.assert_array_equal(got.class_index, batch)
    for key in VERDICT_KEYS:
        np.testing.assert_array_equal(got.fields[key], ref.fields[key], err_msg=key)
    if expected is not None:
        np.testing.assert_array_equal(batch, expected)


# ----------------------------------------------------------------------------- every family


@pytest.fixture(scope="module")
def family_data():
    rng = np.random.default_rng(7)
    widths = [8, 16, 3, 12]
    x = np.stack([rng.integers(0, 1 << w, 150) for w in widths], axis=1)
    y = ((x[:, 0] > 100).astype(int) + (x[:, 1] > 30000).astype(int) + (x[:, 2] > 5)) % 3
    probe = np.vstack([np.stack([rng.integers(0, 1 << (w + 2), 300) for w in widths], axis=1),
                       extreme_rows(widths)])
    return widths, x, y, probe


@pytest.mark.parametrize("family,tree_code", [*((f, "auto") for f in FAMILIES),
                                              *((f, code) for f in TREES
                                                for code in ("arrays", "branches", "bitvector"))])
def test_family_library_equals_model_and_twin(family, tree_code, family_data, tmp_path) -> None:
    widths, x, y, probe = family_data
    ds, trained = train(family, widths, x, y)
    program = build_program(trained, ds.features, ds.class_labels, DSCP_PLAN)
    lib = emit_and_load(program, tmp_path, tree_code=tree_code)
    assert (lib.abi_version, lib.n_features, lib.n_classes) == (1, len(widths), 3)
    rows = np.vstack([ds.x_train, probe])
    expected = trained.predict_quantised(masked(rows, widths))
    assert_agrees(lib, program, rows, expected)
    run = CTarget().run_twin(program, tmp_path, rows)
    np.testing.assert_array_equal(run.class_index, expected)
    np.testing.assert_array_equal(run.fields["verdict_mark"], (expected == 1).astype(int))


@pytest.mark.parametrize("family", FAMILIES)
def test_estimate_is_sensible(family, family_data) -> None:
    widths, x, y, _ = family_data
    ds, trained = train(family, widths, x, y)
    target = CTarget()
    program = build_program(trained, ds.features, ds.class_labels, DSCP_PLAN)
    usage = target.estimate(program)
    assert (usage.stages, usage.tcam_kbit, usage.phv_bits) == (0, 0.0, 0)
    assert usage.tables >= 1 and usage.entries >= 1
    assert usage.sram_kbit > 0 and usage.latency_ns >= target.profile.call_ns
    assert usage.throughput_gpps == pytest.approx(1 / usage.latency_ns)


# ----------------------------------------------------------------------------- property


@st.composite
def small_problems(draw: st.DrawFn):
    n_features = draw(st.integers(1, 3))
    widths = [draw(st.sampled_from([1, 3, 8, 12, 16, 32])) for _ in range(n_features)]
    n_classes = draw(st.integers(2, 4))
    n = draw(st.integers(12, 60))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = np.stack([rng.integers(0, 1 << w, n) for w in widths], axis=1)
    y = rng.integers(0, n_classes, n)
    y[:n_classes] = np.arange(n_classes)
    y[n_classes:2 * n_classes] = np.arange(n_classes)
    probe = np.vstack([np.stack([rng.integers(0, 1 << w, 100) for w in widths], axis=1),
                       extreme_rows(widths)])
    return widths, x, y, probe, seed


@pytest.mark.parametrize("family", ["dt", "rf", "gnb", "kmeans"])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(problem=small_problems(), drop=st.booleans())
def test_property_random_datasets(family, problem, drop, tmp_path_factory) -> None:
    widths, x, y, probe, seed = problem
    ds, trained = train(family, widths, x, y, seed)
    plan = VerdictPlan(kind=VerdictKind.DROP, drop=frozenset({0})) if drop else DSCP_PLAN
    program = build_program(trained, ds.features, ds.class_labels, plan)
    lib = emit_and_load(program, tmp_path_factory.mktemp("prop"))
    rows = np.vstack([ds.x_train, probe])
    assert_agrees(lib, program, rows, trained.predict_quantised(masked(rows, widths)))


# ----------------------------------------------------------------------------- example program


def test_example_program_matches_ctypes(family_data, tmp_path) -> None:
    widths, x, y, probe = family_data
    ds, trained = train("dt", widths, x, y)
    program = build_program(trained, ds.features, ds.class_labels, DSCP_PLAN)
    files = CTarget().emit(program, tmp_path, "example model")
    lib = CLibrary(files["c_library"])
    exe = compile_executable([files["c_example"], files["c_source"], files["c_header"]],
                             tmp_path / "example")
    for row in probe[:20]:
        out = subprocess.run([str(exe), *map(str, row)], capture_output=True, text=True,
                             check=True).stdout
        verdict = lib.classify_verdict(row)
        assert out.splitlines()[0] == f"class {int(lib.classify(row)[0])}"
        assert f"port {int(verdict.fields['verdict_port'][0])} " in out
    make = subprocess.run(["make", "-C", str(files["c_makefile"].parent)], capture_output=True,
                          text=True, check=False)
    assert make.returncode == 0, make.stdout + make.stderr


# ----------------------------------------------------------------------------- MLP by hand


def random_mlp(rng: np.random.Generator, n_in: int) -> QMLP:
    def weights(n_out: int, n_inputs: int) -> tuple[tuple[int, ...], ...]:
        return tuple(map(tuple, rng.integers(-128, 128, (n_out, n_inputs)).tolist()))

    def bias(n: int) -> tuple[int, ...]:
        return tuple(rng.integers(-5000, 5000, n).tolist())

    lut = tuple(rng.integers(-128, 128, 256).tolist())
    layers = (
        DenseLayer(weights(12, n_in), bias(12), multiplier=181, shift=14, activation="relu"),
        DenseLayer(weights(9, 12), bias(9), multiplier=97, shift=13, activation="lut", lut=lut),
        DenseLayer(weights(7, 9), bias(7), multiplier=3, shift=9, activation="none"),
        DenseLayer(weights(4, 7), bias(4)),
    )
    return QMLP(input_shift=(0, 3, 8)[:n_in], layers=layers)


def mlp_program(mlp: QMLP, widths: list[int], labels: tuple[str, ...] = ("a", "b", "c", "d")
                ) -> CpuProgram:
    features = tuple(FeatureDecl(f"x{i}", w) for i, w in enumerate(widths))
    return lower_cpu(mlp, features, labels, DSCP_PLAN, (2, 0, 3, 1))


def test_hand_built_mlp_matches_scores(tmp_path) -> None:
    rng = np.random.default_rng(3)
    widths = [8, 12, 16]
    mlp = random_mlp(rng, 3)
    program = mlp_program(mlp, widths)
    lib = emit_and_load(program, tmp_path)
    rows = np.vstack([np.stack([rng.integers(0, 1 << (w + 1), 2000) for w in widths], axis=1),
                      extreme_rows(widths)])
    winners = np.argmax(mlp.scores(masked(rows, widths)), axis=1)
    expected = np.asarray((2, 0, 3, 1))[winners]
    assert len(set(winners.tolist())) > 1  # the probe reaches several winners
    assert_agrees(lib, program, rows, expected)


def test_mlp_rejects_out_of_range_weights() -> None:
    mlp = QMLP((0,), (DenseLayer(((300,),), (0,)),))
    with pytest.raises(ValueError, match="int8"):
        mlp_program(mlp, [8], labels=("a",))


# ----------------------------------------------------------------------------- edge semantics


def test_awkward_trees_and_ties(tmp_path) -> None:
    """Thresholds below 0 and at or above a width's maximum, splits the path already decides,
    sibling leaves that agree, and arg-max ties (to the lower index), in every tree code."""
    w = (3, 32)
    t0 = QTree((0, 1, -2, 0, -2, -2, 0, -2, -2),
               (5, 2**32 - 1, 0, 9, 0, 0, -3, 0, 0),
               (1, 2, -1, 4, -1, -1, 7, -1, -1), (6, 3, -1, 5, -1, -1, 8, -1, -1),
               ((0, 0, 0),) * 2 + ((1, 1, 0),) + ((0,) * 3,) + ((2, 2, 2),) + ((0, 0, 5),)
               + ((0,) * 3,) + ((1, 0, 1),) + ((0, 1, 1),))
    t1 = QTree((1, -2, -2), (2**31, 0, 0), (1, -1, -1), (2, -1, -1),
               ((0, 0, 0), (0, 0, 1), (1, 1, 0)))
    rows = np.array([[a, b] for a in range(8)
                     for b in (0, 1, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1)])
    feats = tuple(FeatureDecl(f"x{i}", wi) for i, wi in enumerate(w))
    for trees in ((t0,), (t0, t1)):
        model = QTreeEnsemble(trees, (0, 0, 0))
        program = lower_cpu(model, feats, ("a", "b", "c"), DSCP_PLAN)
        for code in ("arrays", "branches", "bitvector"):
            lib = emit_and_load(program, tmp_path / f"{len(trees)}{code}", tree_code=code)
            assert_agrees(lib, program, rows, np.argmax(model.scores(rows), axis=1))


def test_wide_and_narrow_encoders(tmp_path) -> None:
    """Direct tables (<= 16 bits) and binary search (32 bits) at every bin edge."""
    edges32 = (0, 7, 2**20, 2**31, 2**32 - 2, 2**32 - 1)
    model = QLookupSum((FeatureBins(0, (3, 65534, 65535), ((1, 0), (0, 3), (2, 2))),
                        FeatureBins(1, edges32, tuple((i % 3, 2 - i % 3) for i in range(6)))),
                       (0, 1))
    feats = (FeatureDecl("a", 16), FeatureDecl("b", 32))
    program = lower_cpu(model, feats, ("a", "b"), DSCP_PLAN)
    lib = emit_and_load(program, tmp_path)
    values = sorted({max(e + d, 0) for e in edges32 for d in (-1, 0, 1)} - {2**32})
    rows = np.array([[a, b] for a in (0, 3, 4, 65534, 65535) for b in values])
    assert_agrees(lib, program, rows, np.argmax(model.scores(rows), axis=1))


# ----------------------------------------------------------------------------- hostile names


def strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


@pytest.mark.parametrize("family", ["dt", "gnb"])
def test_hostile_names_change_only_comments(family, family_data, tmp_path) -> None:
    widths, x, y, _ = family_data
    texts = []
    for i, (names, label) in enumerate([
            (None, lambda v: f"c{v}"),
            ([f"{HOSTILE}{j}" for j in range(len(widths))], lambda v: f"{HOSTILE} class {v}")]):
        ds, trained = train(family, widths, x, y, names=names, label=label)
        program = build_program(trained, ds.features, ds.class_labels, DSCP_PLAN)
        files = emit_c(program, name="same")
        for name, text in files.items():
            (tmp_path / str(i)).mkdir(exist_ok=True)
            (tmp_path / str(i) / name).write_text(text)
        compile_shared([tmp_path / str(i) / "hmn_same.c"], tmp_path / str(i))
        texts.append({k: strip_comments(v) for k, v in files.items() if k.endswith((".c", ".h"))})
    assert texts[0] == texts[1]
    hostile_source = emit_c(program, name=HOSTILE)
    assert "hmn_include_x_int_main.c" in hostile_source
    make_lines = hostile_source["Makefile"].splitlines()
    assert make_lines[0].startswith("#") and "<x>" not in "".join(make_lines[1:])
    for name, text in hostile_source.items():
        if name == "Makefile":
            continue
        assert "<x>" not in strip_comments(text) and "main(){}" not in strip_comments(text)
        for ident in re.findall(r"\b(hmn_[A-Za-z0-9_]*)", strip_comments(text)):
            assert re.fullmatch(r"[a-z_][a-z0-9_]*", ident), ident


def test_compile_error_carries_gcc_output(tmp_path) -> None:
    src = tmp_path / "hmn_broken.c"
    src.write_text("int f(void) { int unused; return 0; }\n")
    with pytest.raises(CompileError, match="unused"):
        compile_shared([src], tmp_path)


def test_bitvector_boosted_trees_in_every_block(tmp_path) -> None:
    """Many boosted trees (one score column each) over 16-bit features: ``auto`` takes the
    bitvector code (QuickScorer's layout) for batches; batches of 1, 63, 64, 65 and 200 rows
    and single calls equal the model, including rows at the thresholds and the widths' ends."""
    from homunculus.targets.c.codegen import build_context

    rng = np.random.default_rng(3)
    widths = (16, 8, 12)
    trees = []
    for t in range(45):  # depth 3, one split leaf-deep on the left, sometimes a split that
        f = [int(v) for v in rng.integers(0, 3, 5)]  # never goes right (threshold at the max)
        thr = [int(rng.integers(0, 1 << widths[v])) for v in f]
        thr[4] = (1 << widths[f[4]]) - 1 if t % 3 == 0 else thr[4]
        col = t % 3
        leaf = [tuple(int(rng.integers(-50, 50)) if k == col else 0 for k in range(3))
                for _ in range(6)]
        zero = (0, 0, 0)
        # nodes: 0 split(1, 2); 1 split(3, 4); 2 split(5, 6); 3 leaf; 4 split(7, 8); 5-8 leaves
        trees.append(QTree((f[0], f[1], f[2], -2, f[4], -2, -2, -2, -2),
                           (thr[0], thr[1], thr[2], 0, thr[4], 0, 0, 0, 0),
                           (1, 3, 5, -1, 7, -1, -1, -1, -1), (2, 4, 6, -1, 8, -1, -1, -1, -1),
                           (zero, zero, zero, leaf[0], zero, leaf[1], leaf[2], leaf[3],
                            leaf[4])))
    model = QTreeEnsemble(tuple(trees), (1, 0, 2))
    feats = tuple(FeatureDecl(f"x{i}", w) for i, w in enumerate(widths))
    program = lower_cpu(model, feats, ("a", "b", "c"), DSCP_PLAN)
    assert program.model.mode == "scalar"
    assert build_context(program, "m")["bv"]["lane"] == "uint16_t"
    lib = emit_and_load(program, tmp_path)
    edges = np.array([[tr.threshold[0] + d, tr.threshold[1] + d, tr.threshold[2] + d]
                      for tr in trees[:20] for d in (0, 1)]) % np.array([1 << w for w in widths])
    rows = np.vstack([np.stack([rng.integers(0, 1 << w, 160) for w in widths], axis=1), edges,
                      extreme_rows(list(widths))])
    expected = np.argmax(model.scores(masked(rows, list(widths))), axis=1)
    assert_agrees(lib, program, rows, expected)
    for n in (1, 63, 64, 65, 200):
        np.testing.assert_array_equal(lib.classify_batch(rows[:n]), expected[:n])


def test_auto_tree_code_and_its_cost() -> None:
    """``auto``: the bitvector code for >= 40 boosted trees of <= 16 leaves over <= 16-bit
    features, if/else for fewer trees or wider features; its one-row cost is the flat arrays'."""
    from homunculus.ir.cpu import FlatTree, TreeModel
    from homunculus.targets.c import resources
    from homunculus.targets.c.codegen import BITVECTOR_MIN_TREES, resolve_tree_code

    stump = FlatTree((0, -1, -1), (5, 0, 1), (1, 1, 2), ((0,), (3,)), column=0, depth=1)
    many = TreeModel("scalar", 2, (0, 0), (stump,) * BITVECTOR_MIN_TREES)
    few = TreeModel("scalar", 2, (0, 0), (stump,) * (BITVECTOR_MIN_TREES - 1))
    assert resolve_tree_code(many, "auto", [16, 8]) == "bitvector"
    assert resolve_tree_code(many, "auto", [17, 8]) == "branches"
    assert resolve_tree_code(few, "auto", [16, 8]) == "branches"
    assert resolve_tree_code(many, "arrays", [16, 8]) == "arrays"
    with pytest.raises(ValueError, match="tree_code must be"):
        resolve_tree_code(many, "heap", [16, 8])
    feats = (FeatureDecl("a", 16), FeatureDecl("b", 8))
    trees = tuple(QTree((0, -2, -2), (5 + t, 0, 0), (1, -1, -1), (2, -1, -1),
                        ((0, 0), (0, t), (0, -t)) if t % 2 else ((0, 0), (t, 0), (-t, 0)))
                  for t in range(1, BITVECTOR_MIN_TREES + 1))
    program = lower_cpu(QTreeEnsemble(trees, (0, 0)), feats, ("a", "b"), DSCP_PLAN)
    assert program.model.mode == "scalar"
    assert resources.op_counts(program) == resources.op_counts(program, "arrays")
    assert resources.op_counts(program) != resources.op_counts(program, "branches")
