"""``homunculus simulate OUT --pcap FILE``: the generated data plane over a capture.

The twin runs what was compiled into OUT (pipeline.json + the installed runtime/entries.json):
parser eligibility, flow registers, header copies, tables and verdict, packet by packet. The
Python side computes the same packets' features with the reference semantics and asks the
quantised model. Agreement must be 100%; with labels, F1 is measured too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from homunculus.data.traffic import per_capture
from homunculus.errors import DataError, VerificationError
from homunculus.features.library import FeatureDef, FlowConfig
from homunculus.features.reference import reference_features
from homunculus.ir.quantised import from_json, predict_index
from homunculus.ir.serialize import compiled_from_json
from homunculus.targets.p4.entries import read_runtime_entries
from homunculus.targets.p4.twin import simulate_packets, with_installed_entries


@dataclass
class SimulationReport:
    packets: int
    classified: int
    counts: dict[str, int]
    agreement: float
    f1_macro: float | None
    labelled: int

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def load_compiled(out_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The pipeline (with its installed entries, for switches) and the quantised model."""
    try:
        pipeline = compiled_from_json(json.loads((out_dir / "pipeline.json").read_text()))
        model = json.loads((out_dir / "model" / "quantised.json").read_text())
    except FileNotFoundError as exc:
        raise DataError(f"{out_dir}: not a compiled output directory ({exc.filename} missing)"
                        ) from None
    entries = out_dir / "runtime" / "entries.json"
    adapt = out_dir / "runtime" / "adapt.json"
    if adapt.is_file() and json.loads(adapt.read_text()).get("versioned"):
        from homunculus.targets.p4.versioned import versioned

        pipeline = versioned(pipeline, int(json.loads(adapt.read_text()).get("version", 0)))
    if entries.is_file():
        installed = read_runtime_entries(json.loads(entries.read_text()), pipeline)
        pipeline = with_installed_entries(pipeline, installed)
    return pipeline, model


def run_data_plane(out_dir: Path, pipeline: Any, table: pd.DataFrame) -> tuple[Any, np.ndarray]:
    """The compiled data plane over the packets: the P4 twin for switch compiles, the program
    itself in the kernel (BPF_PROG_TEST_RUN) for XDP compiles."""
    if (out_dir / "xdp").is_dir():
        from homunculus.targets.xdp.target import XdpTarget

        return XdpTarget().run_packets(pipeline, out_dir, table)
    if (out_dir / "runtime" / "entries.json").is_file():
        return simulate_packets(pipeline, table)
    raise DataError(f"{out_dir}: packet simulation needs a switch or XDP compile (a C library "
                    "classifies feature vectors; its callers compute the features)")


def model_predictions(model: dict[str, Any], table: pd.DataFrame,
                      classified: np.ndarray) -> np.ndarray:
    """Class indices the quantised model gives the classified packets (reference features)."""
    traffic = model.get("traffic")
    if traffic is None:
        raise DataError("this output was compiled from a feature table; packet simulation needs "
                        "a compile from traffic (a spec with a 'traffic' section)")
    defs = [FeatureDef(**f) for f in traffic["features"]]
    config = FlowConfig(**traffic["config"])
    values, _ = per_capture(table, lambda t: reference_features(t, defs, config))
    winners = predict_index(from_json(model["model"]), values[classified])
    return np.asarray(model["winner_to_class"], dtype=np.int64)[winners]


def simulate_capture(out_dir: Path, table: pd.DataFrame) -> SimulationReport:
    pipeline, model = load_compiled(out_dir)
    result, classified = run_data_plane(out_dir, pipeline, table)
    expected = model_predictions(model, table, classified)
    produced = result.class_index
    bad = np.nonzero(expected != produced)[0]
    if len(bad):
        raise VerificationError(f"the simulated data plane disagrees with the model on "
                                f"{len(bad)} of {len(produced)} classified packets")
    labels = pipeline.class_labels
    counts = {labels[c]: int((produced == c).sum()) for c in range(len(labels))}
    f1, labelled = None, 0
    if "label" in table.columns:
        truth = table["label"].astype(str).to_numpy()[classified]
        known = np.isin(truth, labels)
        labelled = int(known.sum())
        if labelled:
            index = {label: i for i, label in enumerate(labels)}
            y = np.array([index[t] for t in truth[known]])
            f1 = float(f1_score(y, produced[known], average="macro",
                                labels=list(range(len(labels))), zero_division=0))
    return SimulationReport(len(table), int(classified.sum()), counts, 1.0, f1, labelled)
