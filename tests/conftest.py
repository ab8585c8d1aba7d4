"""Shared fixtures: small seeded datasets and paths to the bundled example."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from homunculus.data.dataset import Dataset, FeatureDecl, make_dataset
from homunculus.features.library import FeatureDef, histogram

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = ROOT / "examples" / "iot"


def synthetic_dataset(n: int = 400, seed: int = 0, n_classes: int = 3) -> Dataset:
    """Three integer features of different widths with a learnable, noisy class rule."""
    rng = np.random.default_rng(seed)
    x = np.stack([rng.integers(0, 256, n), rng.integers(0, 65536, n), rng.integers(0, 16, n)], 1)
    y = ((x[:, 0] > 100).astype(int) + (x[:, 1] > 30000).astype(int)) % n_classes
    noise = rng.random(n) < 0.05
    y = np.where(noise, rng.integers(0, n_classes, n), y)
    labels = np.array([f"class{v}" for v in y])
    feats = [FeatureDecl("a", 8, "ipv4.ttl"), FeatureDecl("b", 16), FeatureDecl("c", 4)]
    cut = int(n * 0.7)
    return make_dataset(feats, x[:cut], labels[:cut], x[cut:], labels[cut:], "synthetic")


@pytest.fixture
def small_dataset() -> Dataset:
    return synthetic_dataset()


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BASE_SPEC = """\
name: test-spec
data:
  path: {data}
  label: device
  features:
    - {{name: ip_len, width: 16, field: ipv4.total_len}}
    - {{name: ttl, width: 8, field: ipv4.ttl}}
    - {{name: proto, width: 8}}
    - {{name: dst_port, width: 16}}
model:
  name: m
  metric: f1_macro
  algorithms: {algorithms}
platform:
  target: {target}
  constraints:
    resources: {{stages: 12}}
search:
  trials: {trials}
  seed: 0
"""


@pytest.fixture
def example_csv(tmp_path: Path) -> Path:
    """The first 1500 rows of the bundled example (fast to search)."""
    import pandas as pd

    frame = pd.read_csv(EXAMPLE_DIR / "iot_features.csv").head(1500)
    path = tmp_path / "iot.csv"
    frame.to_csv(path, index=False)
    return path


def spec_text(data: Path, algorithms: str = "[dt, gnb]", target: str = "tofino",
              trials: int = 4) -> str:
    return BASE_SPEC.format(data=data, algorithms=algorithms, target=target, trials=trials)


def every_flow_kind(header: str = "ipv4.ttl", header_width: int = 8) -> list[FeatureDef]:
    """One header feature and flow features of every kind, some narrow enough to saturate."""
    return [
        FeatureDef("hdr", "header", header_width, field=header),
        FeatureDef("pkts", "pkt_count", 3),
        FeatureDef("pkts16", "pkt_count", 16),
        FeatureDef("bytes", "byte_count", 12),
        FeatureDef("bytes32", "byte_count", 32),
        FeatureDef("min", "min_len", 16),
        FeatureDef("max", "max_len", 16),
        FeatureDef("ewma", "ewma_len", 16, param=3),
        FeatureDef("iat", "iat", 20),
        FeatureDef("age", "flow_age", 32),
        FeatureDef("age10", "flow_age", 10),
        *histogram("lh", "len_bin", 3, 9, 4),
        *histogram("ih", "iat_bin", 3, 12, 6),
    ]


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones too) with a digest of its content."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = "special"
    return out
