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

A part of an MLP split by layers over a chain of devices (schedule/split_mlp.py) is a QMLP too:
``carried_in`` -- its inputs are the previous part's int8 activations, received as bytes (two's
complement) and sign-extended, instead of features (``input_shift`` is then unused);
``carries_out`` -- every one of its layers is hidden (requantised and activated) and its output
is the last layer's int8 activations, which the next device receives, instead of scores. Chaining
the parts computes exactly the whole network's integers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    carried_in: bool = False  # inputs: the previous part's int8 activations (bytes)
    carries_out: bool = False  # outputs: the last layer's int8 activations, not scores

    @property
    def n_classes(self) -> int:
        """Output scores (or, ``carries_out``, activations carried on)."""
        return len(self.layers[-1].bias)

    def inputs(self, x: np.ndarray) -> np.ndarray:
        """The first layer's int8 inputs: features shifted and clamped to 0..127, or carried
        bytes sign-extended to -128..127."""
        x = np.asarray(x, dtype=np.int64)
        if self.carried_in:
            b = x & 0xFF
            return b - ((b & 0x80) << 1)
        return np.minimum(x >> np.asarray(self.input_shift), 127)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Integer output scores (n, n_classes) for unsigned integer feature rows (a part that
        ``carries_out``: its last layer's activations)."""
        a = self.inputs(x)
        for i, layer in enumerate(self.layers):
            acc = a @ np.asarray(layer.weights, dtype=np.int64).T + np.asarray(layer.bias)
            if i == len(self.layers) - 1 and not self.carries_out:
                return acc
            y = np.clip((acc * layer.multiplier + (1 << (layer.shift - 1))) >> layer.shift,
                        -128, 127)
            if layer.activation == "relu":
                a = np.maximum(y, 0)
            elif layer.activation == "lut":
                a = np.asarray(layer.lut, dtype=np.int64)[y + 128]
            else:
                a = y
        if self.layers:  # a part carrying its activations on
            return a
        raise ValueError("an MLP needs at least one layer")


def activation_of(model: QMLP, i: int, x: np.ndarray) -> np.ndarray:
    """The int8 activations after layer ``i`` (hidden) of the whole network ``model``: what a
    split carries from the device ending at layer ``i``."""
    return replace(model, layers=model.layers[:i + 1], carries_out=True).scores(x)


def check_ranges(model: QMLP) -> None:
    """Raise if any weight is not int8, any bias not int32, or an accumulator could overflow."""
    bound = 128 if model.carried_in else 127  # |input| of the first layer; then activations
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
