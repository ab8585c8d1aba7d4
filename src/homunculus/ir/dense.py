"""Quantised MLP (LiteFlow-style integer snapshot): the exact integer semantics every backend
(Python reference, generated C, generated eBPF) must reproduce.

Input: feature j (unsigned, declared width) -> ``x_j = min(x >> input_shift[j], 127)`` (0..127).
Hidden layer l (int8 weights W[out][in], int32 bias b, requantisation multiplier M >= 0 and
shift S >= 1):
    acc_i = b_i + sum_j W[i][j] * a_j                       (int32; no overflow by construction:
                                                             |acc| < 2**31 is checked at build)
    y_i   = clamp((acc_i * M + 2**(S-1)) >> S, -128, 127)   (int64 product, arithmetic shift)
    a_i   = activation(y_i): "relu" -> max(y_i, 0); "lut" -> lut[y_i + 128] (256 int8 entries,
            e.g. a tanh or sigmoid table); "none" -> y_i
Output layer (the last): scores_i = acc_i (int32, no requantisation, no activation).
Class = arg-max of the scores, ties to the lowest index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTIVATIONS = ("relu", "lut", "none")


@dataclass(frozen=True)
class DenseLayer:
    weights: tuple[tuple[int, ...], ...]  # [out][in], int8
    bias: tuple[int, ...]  # int32
    multiplier: int = 1  # ignored on the output layer
    shift: int = 1
    activation: str = "relu"
    lut: tuple[int, ...] | None = None  # 256 int8 values when activation == "lut"

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.weights), len(self.weights[0])


@dataclass(frozen=True)
class QMLP:
    input_shift: tuple[int, ...]
    layers: tuple[DenseLayer, ...]
    kind: str = "mlp"

    @property
    def n_classes(self) -> int:
        return len(self.layers[-1].bias)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Integer output scores (n, n_classes) for unsigned integer feature rows."""
        a = np.minimum(np.asarray(x, dtype=np.int64) >> np.asarray(self.input_shift), 127)
        for i, layer in enumerate(self.layers):
            acc = a @ np.asarray(layer.weights, dtype=np.int64).T + np.asarray(layer.bias)
            if i == len(self.layers) - 1:
                return acc
            y = np.clip((acc * layer.multiplier + (1 << (layer.shift - 1))) >> layer.shift,
                        -128, 127)
            if layer.activation == "relu":
                a = np.maximum(y, 0)
            elif layer.activation == "lut":
                a = np.asarray(layer.lut, dtype=np.int64)[y + 128]
            else:
                a = y
        raise ValueError("an MLP needs at least one layer")


def check_ranges(model: QMLP) -> None:
    """Raise if any weight is not int8, any bias not int32, or an accumulator could overflow."""
    bound = 127  # |input| of the first layer and of every later layer's activations
    for layer in model.layers:
        w = np.asarray(layer.weights)
        if w.min() < -128 or w.max() > 127:
            raise ValueError("weights must be int8")
        worst = np.abs(w).sum(axis=1).max() * bound + np.abs(np.asarray(layer.bias)).max()
        if worst >= 2**31:
            raise ValueError(f"an accumulator could overflow int32 (bound {worst})")
        if layer.activation == "lut" and (layer.lut is None or len(layer.lut) != 256):
            raise ValueError("a lut activation needs 256 entries")
        bound = 128
