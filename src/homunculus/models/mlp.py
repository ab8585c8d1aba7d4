"""Multi-layer perceptron family: a small PyTorch MLP quantised to a LiteFlow-style `QMLP`.

Inputs are preprocessed exactly like the integer path (`homunculus.ir.dense`): feature j becomes
``min(x_j >> input_shift_j, 127) / 127``, the shift chosen per feature so that the training
data's 99.5th percentile fits in 0..127. After float training every layer is quantised
post-training: symmetric int8 weights (one scale per layer), int32 biases at the accumulator's
scale, int8 activations with a per-layer scale calibrated on the training data, and a
requantisation ``M / 2**S`` (``M < 2**15``). tanh and sigmoid become 256-entry int8 tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from homunculus.ir.dense import QMLP, DenseLayer, check_ranges
from homunculus.models.base import TrainedModel, register

ACTIVATIONS = ("relu", "tanh", "sigmoid")
MAX_HIDDEN_LAYERS = 3
INPUT_PERCENTILE = 99.5  # the input shift makes this percentile of each feature fit in 0..127
CALIBRATION_PERCENTILE = 99.9  # of |pre-activation| on the training data -> int8 range
# Pre-activations beyond these are saturated by the function anyway (tanh(4), sigmoid(8) ~ 1),
# so a LUT's input range never needs to be wider.
LUT_SATURATION = {"tanh": 4.0, "sigmoid": 8.0}
MULTIPLIER_LIMIT = 1 << 15  # requantisation multiplier M < 2**15
MAX_SHIFT = 30
INT32_MAX = (1 << 31) - 1


# ----------------------------------------------------------------------------- float model


def input_shifts(x: np.ndarray, widths: tuple[int, ...]) -> tuple[int, ...]:
    """Per feature, the smallest right shift making the 99.5th percentile at most 127."""
    shifts = []
    for j in range(len(widths)):
        p = int(np.percentile(x[:, j], INPUT_PERCENTILE)) if len(x) else 0
        shifts.append(max(0, p.bit_length() - 7))
    return tuple(shifts)


def preprocess_int(x: np.ndarray, shifts: tuple[int, ...]) -> np.ndarray:
    """The integer-path input: ``min(x >> shift, 127)`` per feature (int64, 0..127)."""
    return np.minimum(np.asarray(x, dtype=np.int64) >> np.asarray(shifts, dtype=np.int64), 127)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


FLOAT_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
}


@dataclass(frozen=True)
class FloatMLP:
    """The trained float network as numpy arrays (picklable; no torch needed to predict)."""

    input_shift: tuple[int, ...]
    weights: tuple[np.ndarray, ...]  # [out][in] per layer
    biases: tuple[np.ndarray, ...]
    activation: str

    def preactivations(self, x: np.ndarray) -> list[np.ndarray]:
        """Each layer's float pre-activation (the last one is the logits)."""
        a = preprocess_int(np.asarray(x).astype(np.int64), self.input_shift) / 127.0
        out = []
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            z = a @ w.T + b
            out.append(z)
            if i < len(self.weights) - 1:
                a = FLOAT_ACTIVATIONS[self.activation](z)
        return out

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.preactivations(x)[-1]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(x), axis=1)


# ----------------------------------------------------------------------------- training


@contextmanager
def _deterministic_torch(seed: int) -> Iterator[None]:
    """Seed torch, force deterministic kernels and one thread; restore everything afterwards."""
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)


def _build_network(n_in: int, hidden: tuple[int, ...], n_out: int, activation: str) -> Any:
    import torch

    act: dict[str, type[torch.nn.Module]] = {
        "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid,
    }
    layers: list[torch.nn.Module] = []
    for width in hidden:
        layers += [torch.nn.Linear(n_in, width), act[activation]()]
        n_in = width
    layers.append(torch.nn.Linear(n_in, n_out))
    return torch.nn.Sequential(*layers)


def train_float(a: np.ndarray, y: np.ndarray, hidden: tuple[int, ...], n_classes: int,
                activation: str, lr: float, epochs: int, batch_size: int,
                seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Train on preprocessed float inputs ``a`` with Adam; return (weights, biases) per layer."""
    import torch

    with _deterministic_torch(seed):
        net = _build_network(a.shape[1], hidden, n_classes, activation)
        xt = torch.as_tensor(a, dtype=torch.float32)
        yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        loss_fn = torch.nn.CrossEntropyLoss()
        for _ in range(epochs):
            order = torch.randperm(len(xt), generator=gen)
            for start in range(0, len(xt), batch_size):
                idx = order[start:start + batch_size]
                opt.zero_grad()
                loss_fn(net(xt[idx]), yt[idx]).backward()
                opt.step()
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        weights = [m.weight.detach().double().numpy().copy() for m in linears]
        biases = [m.bias.detach().double().numpy().copy() for m in linears]
    return weights, biases


# ----------------------------------------------------------------------------- quantisation


def requant_params(ratio: float) -> tuple[int, int]:
    """``(M, S)`` with ``M / 2**S ~= ratio``, ``0 <= M < 2**15`` and ``1 <= S <= 30``."""
    if ratio <= 0:
        return 0, 1
    shift = MAX_SHIFT
    while shift > 1 and round(ratio * (1 << shift)) >= MULTIPLIER_LIMIT:
        shift -= 1
    return min(round(ratio * (1 << shift)), MULTIPLIER_LIMIT - 1), shift


def activation_lut(activation: str, scale_y: float) -> tuple[int, ...]:
    """256 int8 outputs of tanh / sigmoid at ``y * scale_y`` for ``y = -128..127``, at 1/127."""
    y = np.arange(-128, 128, dtype=np.float64) * scale_y
    lo = -127 if activation == "tanh" else 0
    values = np.clip(np.rint(FLOAT_ACTIVATIONS[activation](y) * 127), lo, 127)
    return tuple(int(v) for v in values)


def _weight_scale(w: np.ndarray) -> float:
    top = float(np.abs(w).max()) if w.size else 0.0
    return top / 127 if top > 0 else 1.0


def _preact_scale(z: np.ndarray, activation: str) -> float:
    """The scale of the int8 pre-activation ``y``, calibrated on the training data."""
    values = np.maximum(z, 0.0) if activation == "relu" else np.abs(z)
    top = float(np.percentile(values, CALIBRATION_PERCENTILE)) if values.size else 0.0
    top = min(top, LUT_SATURATION.get(activation, math.inf))
    return top / 127 if top > 1e-12 else 1.0 / 127


def _int_bias(b: np.ndarray, scale_acc: float, w_int: np.ndarray) -> tuple[int, ...]:
    """Biases at the accumulator scale, clipped so that no accumulator can overflow int32."""
    room = INT32_MAX - 128 * int(np.abs(w_int).sum(axis=1).max(initial=0))
    return tuple(int(v) for v in np.clip(np.rint(b / scale_acc), -room, room))


def quantise(model: FloatMLP, x_calib: np.ndarray) -> QMLP:
    """Post-training quantisation of ``model`` to a `QMLP` (scales calibrated on ``x_calib``)."""
    preacts = model.preactivations(x_calib)
    scale_in = 1.0 / 127  # the first layer's inputs are the 0..127 integers
    layers = []
    last = len(model.weights) - 1
    for i, (w, b) in enumerate(zip(model.weights, model.biases, strict=True)):
        scale_w = _weight_scale(w)
        w_int = np.clip(np.rint(w / scale_w), -127, 127).astype(np.int64)
        bias = _int_bias(b, scale_in * scale_w, w_int)
        weights = tuple(tuple(int(v) for v in row) for row in w_int)
        if i == last:
            layers.append(DenseLayer(weights, bias, activation="none"))
            break
        scale_y = _preact_scale(preacts[i], model.activation)
        m, s = requant_params(scale_in * scale_w / scale_y)
        if model.activation == "relu":
            layers.append(DenseLayer(weights, bias, m, s, "relu"))
            scale_in = scale_y
        else:
            lut = activation_lut(model.activation, scale_y)
            layers.append(DenseLayer(weights, bias, m, s, "lut", lut))
            scale_in = 1.0 / 127
    q = QMLP(input_shift=model.input_shift, layers=tuple(layers))
    check_ranges(q)
    return q


# ----------------------------------------------------------------------------- the family


def hidden_widths(params: dict[str, Any]) -> tuple[int, ...]:
    """The hidden layer widths of a parameter set (``mlp_width_<i>`` for i < ``mlp_layers``)."""
    return tuple(int(params[f"mlp_width_{i}"]) for i in range(int(params["mlp_layers"])))


def smallest_qmlp(widths: tuple[int, ...], n_classes: int) -> QMLP:
    """One hidden layer of two relu units over all inputs; every class score varies."""
    shifts = tuple(max(0, w - 7) for w in widths)
    hidden = DenseLayer(weights=((1,) * len(widths), (-1,) * len(widths)), bias=(0, 0),
                        multiplier=1, shift=1, activation="relu")
    out_rows = tuple((1, -1) if c % 2 == 0 else (-1, 1) for c in range(n_classes))
    output = DenseLayer(weights=out_rows, bias=tuple(range(n_classes)), activation="none")
    return QMLP(input_shift=shifts, layers=(hidden, output))


class MLPFamily:
    name = "mlp"
    description = ("quantised multi-layer perceptron (int8 weights, int32 accumulators; "
                   "dense targets only)")
    requires_dense = True  # multiply-accumulate layers: no match-action target can run it

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        n_layers = trial.suggest_int("mlp_layers", 1, MAX_HIDDEN_LAYERS)
        params: dict[str, Any] = {"mlp_layers": n_layers}
        for i in range(n_layers):
            params[f"mlp_width_{i}"] = trial.suggest_int(f"mlp_width_{i}", 4, 64, log=True)
        params.update({
            "mlp_activation": trial.suggest_categorical("mlp_activation", list(ACTIVATIONS)),
            "mlp_lr": trial.suggest_float("mlp_lr", 1e-3, 1e-1, log=True),
            "mlp_epochs": trial.suggest_int("mlp_epochs", 10, 60),
            "mlp_batch_size": trial.suggest_categorical("mlp_batch_size", [32, 64, 128, 256]),
        })
        return params

    def default_params(self) -> dict[str, Any]:
        return {"mlp_layers": 2, "mlp_width_0": 16, "mlp_width_1": 16, "mlp_activation": "relu",
                "mlp_lr": 1e-2, "mlp_epochs": 30, "mlp_batch_size": 64}

    def minimal_params(self) -> dict[str, Any]:
        return {"mlp_layers": 1, "mlp_width_0": 4, "mlp_activation": "relu", "mlp_lr": 3e-2,
                "mlp_epochs": 10, "mlp_batch_size": 64}

    def smallest_model(self, widths: tuple[int, ...], n_classes: int) -> QMLP:
        """The smallest pipeline this family can produce (for candidate selection)."""
        return smallest_qmlp(widths, n_classes)

    def train(self, params: dict[str, Any], x: np.ndarray, y: np.ndarray, n_classes: int,
              widths: tuple[int, ...], seed: int) -> TrainedModel:
        x = np.asarray(x, dtype=np.int64)
        shifts = input_shifts(x, widths)
        a = preprocess_int(x, shifts) / 127.0
        weights, biases = train_float(
            a, y, hidden_widths(params), n_classes, params["mlp_activation"], params["mlp_lr"],
            int(params["mlp_epochs"]), int(params["mlp_batch_size"]), seed)
        model = FloatMLP(shifts, tuple(weights), tuple(biases), params["mlp_activation"])
        return TrainedModel(self.name, params, model, quantise(model, x))


register(MLPFamily())
