"""The MLP family: seeded training, post-training quantisation to a QMLP, and its lowering."""

from __future__ import annotations

import io

import joblib
import numpy as np
import optuna
import pytest

from homunculus.data.dataset import Dataset, FeatureDecl
from homunculus.ir.dense import QMLP, DenseLayer, check_ranges
from homunculus.ir.pipeline import VerdictKind, VerdictPlan
from homunculus.models.base import FAMILIES, TrainedModel
from homunculus.models.mlp import (
    MLPFamily,
    activation_lut,
    hidden_widths,
    input_shifts,
    requant_params,
)
from homunculus.passes.lower_mlp import lower_mlp

from conftest import synthetic_dataset

FAMILY = MLPFamily()


def _params(activation: str = "relu", layers: int = 2, width: int = 16) -> dict[str, object]:
    params = FAMILY.default_params() | {"mlp_activation": activation, "mlp_layers": layers}
    return params | {f"mlp_width_{i}": width for i in range(layers)}


@pytest.fixture(scope="module")
def data() -> Dataset:
    return synthetic_dataset(n=600)


def _train(ds: Dataset, params: dict[str, object], seed: int = 0) -> TrainedModel:
    return FAMILY.train(params, ds.x_train, ds.y_train, ds.n_classes, ds.widths, seed)


def _accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float((pred == y).mean())


# ----------------------------------------------------------------------------- integer reference


def test_hand_computed_relu_network() -> None:
    """Input shift/clamp, requant rounding (half up, also negative), int8 clamps, raw scores."""
    hidden = DenseLayer(weights=((2, -1), (-3, 1)), bias=(10, -2), multiplier=3, shift=2,
                        activation="relu")
    output = DenseLayer(weights=((1, 1), (0, -2)), bias=(0, 100), activation="none")
    model = QMLP(input_shift=(1, 0), layers=(hidden, output))
    x = np.array([[10, 200], [255, 3]])
    # row 0: a = (5, 127); acc = (-107, 110); y = ((-321+2)>>2, (330+2)>>2) = (-80, 83)
    #        relu -> (0, 83); scores = (83, 100 - 166)
    # row 1: a = (127, 3); acc = (261, -380); y = (785>>2, -1138>>2) = (196, -285)
    #        clamp -> (127, -128); relu -> (127, 0); scores = (127, 100)
    assert model.scores(x).tolist() == [[83, -66], [127, 100]]
    assert model.n_classes == 2
    check_ranges(model)


def test_hand_computed_lut_network() -> None:
    """A LUT activation is indexed by y + 128; ties go to the lowest index."""
    lut = tuple(max(-127, (k - 128) // 2) for k in range(256))
    hidden = DenseLayer(((1,),), (0,), multiplier=1, shift=1, activation="lut", lut=lut)
    output = DenseLayer(((2,), (0,)), (1, -3), activation="none")
    model = QMLP(input_shift=(0,), layers=(hidden, output))
    # x=100: y = 101>>1 = 50, lut[178] = 25, scores (51, -3); x=0: y = 1>>1 = 0 -> (1, -3)
    assert model.scores(np.array([[100], [0]])).tolist() == [[51, -3], [1, -3]]
    tie = QMLP((0,), (hidden, DenseLayer(((0,), (0,)), (5, 5), activation="none")))
    from homunculus.ir.quantised import predict_index

    assert predict_index(tie, np.array([[7]])).tolist() == [0]


def test_requant_params() -> None:
    for ratio in (1e-6, 0.0123, 0.5, 1.0, 3.7, 1000.0):
        m, s = requant_params(ratio)
        assert 0 <= m < 2**15 and 1 <= s <= 30
        assert abs(m / 2**s - ratio) <= max(ratio * 1e-3, 2.0**-s)
    assert requant_params(0.0) == (0, 1)


def test_input_shifts_fit_the_percentile() -> None:
    x = np.stack([np.arange(1000), np.arange(1000) * 60, np.zeros(1000, dtype=int)], axis=1)
    shifts = input_shifts(x, (16, 16, 4))
    assert shifts == (3, 9, 0)  # p99.5 ~ 994 -> >>3 = 124; ~59640 -> >>9 = 116
    for j, s in enumerate(shifts):
        p = int(np.percentile(x[:, j], 99.5))
        assert p >> s <= 127 and (s == 0 or p >> (s - 1) > 127)


# ----------------------------------------------------------------------------- training


def test_training_is_deterministic(data: Dataset) -> None:
    first = _train(data, FAMILY.minimal_params(), seed=3)
    second = _train(data, FAMILY.minimal_params(), seed=3)
    assert first.quantised == second.quantised
    other = _train(data, FAMILY.minimal_params(), seed=4)
    assert other.quantised != first.quantised


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_quantised_accuracy_close_to_float(data: Dataset, activation: str) -> None:
    trained = _train(data, _params(activation))
    q = trained.quantised
    assert isinstance(q, QMLP)
    check_ranges(q)
    assert [layer.shape for layer in q.layers] == [(16, 3), (16, 16), (3, 16)]
    float_acc = _accuracy(trained.predict_float(data.x_test), data.y_test)
    quant_acc = _accuracy(trained.predict_quantised(data.x_test), data.y_test)
    agree = _accuracy(trained.predict_float(data.x_test), trained.predict_quantised(data.x_test))
    print(f"{activation}: float {float_acc:.3f} quantised {quant_acc:.3f} agree {agree:.3f}")
    assert float_acc > 0.7  # learnable (the rule has 5% label noise)
    assert abs(float_acc - quant_acc) <= 0.03
    assert agree >= 0.97


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_lut_activations(data: Dataset, activation: str) -> None:
    q = _train(data, _params(activation, layers=1, width=8)).quantised
    hidden = q.layers[0]
    assert hidden.activation == "lut" and hidden.lut is not None and len(hidden.lut) == 256
    lo = -127 if activation == "tanh" else 0
    assert all(lo <= v <= 127 for v in hidden.lut)
    assert list(hidden.lut) == sorted(hidden.lut)  # monotone like the function


def test_activation_lut_tables() -> None:
    tanh = activation_lut("tanh", 4.0 / 127)
    sig = activation_lut("sigmoid", 8.0 / 127)
    assert tanh[128] == 0 and tanh[0] == -127 and tanh[255] == 127
    assert sig[128] == 64 and sig[0] == 0 and sig[255] == 127


def test_relu_hidden_layers(data: Dataset) -> None:
    q = _train(data, _params("relu", layers=3, width=4)).quantised
    assert [layer.activation for layer in q.layers] == ["relu", "relu", "relu", "none"]
    assert all(0 <= layer.multiplier < 2**15 and 1 <= layer.shift <= 30 for layer in q.layers)


def test_float_model_pickles(data: Dataset) -> None:
    trained = _train(data, FAMILY.minimal_params())
    buffer = io.BytesIO()
    joblib.dump(trained.float_model, buffer)
    buffer.seek(0)
    restored = joblib.load(buffer)
    assert np.array_equal(restored.predict(data.x_test), trained.predict_float(data.x_test))


def test_training_restores_torch_state(data: Dataset) -> None:
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    expected = torch.rand(1).item()
    torch.manual_seed(123)
    _train(data, FAMILY.minimal_params())
    assert torch.rand(1).item() == expected
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


# ----------------------------------------------------------------------------- the family


def test_family_registration_and_params() -> None:
    assert FAMILIES["mlp"].name == "mlp"
    assert MLPFamily.requires_dense is True
    assert hidden_widths(FAMILY.default_params()) == (16, 16)
    trial = optuna.trial.FixedTrial({
        "mlp_layers": 3, "mlp_width_0": 4, "mlp_width_1": 64, "mlp_width_2": 8,
        "mlp_activation": "tanh", "mlp_lr": 0.01, "mlp_epochs": 10, "mlp_batch_size": 32,
    })
    params = FAMILY.suggest(trial)
    assert hidden_widths(params) == (4, 64, 8)
    assert params["mlp_activation"] == "tanh"


def test_smallest_model() -> None:
    q = FAMILY.smallest_model((8, 16, 4), 3)
    check_ranges(q)
    assert [layer.shape for layer in q.layers] == [(2, 3), (3, 2)]
    scores = q.scores(np.array([[255, 65535, 15], [0, 0, 0]]))
    assert scores.shape == (2, 3)
    assert scores[0].tolist() != scores[1].tolist()


# ----------------------------------------------------------------------------- lowering


def test_lower_mlp_builds_a_pipeline(data: Dataset) -> None:
    q = _train(data, FAMILY.minimal_params()).quantised
    plan = VerdictPlan(kind=VerdictKind.FORWARD, ports={0: 3, 2: 5})
    pipe = lower_mlp(q, data.features, data.class_labels, plan)
    assert pipe.mlp is q
    assert pipe.encoders == () and pipe.lookups == ()
    assert pipe.score_sum is None and pipe.argmax is None
    assert pipe.notes["winner"].width == 2
    assert pipe.class_field.width == 2
    assert len(pipe.verdict.entries) == data.n_classes
    assert [e.params[:2] for e in pipe.verdict.entries] == [(0, 3), (1, 1), (2, 5)]
    assert [f.field.width for f in pipe.features] == list(data.widths)


def test_lower_mlp_winner_map_and_arity_check() -> None:
    feats = (FeatureDecl("x", 8), FeatureDecl("y", 8))
    q = FAMILY.smallest_model((8, 8), 2)
    pipe = lower_mlp(q, feats, ("a", "b"), VerdictPlan(), winner_to_class=(1, 0))
    assert [e.params[0] for e in pipe.verdict.entries] == [1, 0]
    with pytest.raises(ValueError, match="inputs"):
        lower_mlp(q, feats[:1], ("a", "b"), VerdictPlan())
