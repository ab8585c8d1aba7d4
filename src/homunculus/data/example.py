"""The bundled example: a seeded, generated IoT traffic-classification feature table.

Five device classes, each a mixture of packet profiles (IPv4 length, TTL, protocol, DSCP, ports,
a coarse inter-arrival bucket) with overlapping ranges and label noise, so that no family scores
perfectly and the resource budget matters. Same seed, same bytes (tested).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ("ip_len", "ttl", "proto", "dscp_byte", "src_port", "dst_port", "iat_bucket")

# class -> list of (weight, ip_len range, ttl choices, proto, dscp choices, dst ports, iat range)
PROFILES: dict[str, list[tuple]] = {
    "camera": [(0.7, (900, 1500), (64,), 17, (0, 184), (554, 5004, 5005), (0, 3)),
               (0.3, (60, 300), (64,), 6, (0,), (443, 80), (2, 8))],
    "plug": [(0.8, (60, 180), (64, 255), 6, (0,), (1883, 8883), (20, 60)),
             (0.2, (60, 120), (64,), 17, (0,), (53, 123), (30, 90))],
    "speaker": [(0.6, (200, 1400), (128, 64), 6, (0, 40), (443, 4070), (1, 10)),
                (0.4, (100, 600), (128,), 17, (0,), (5353, 1900, 53), (5, 40))],
    "thermostat": [(0.9, (60, 260), (64, 255), 6, (0,), (443, 9543), (40, 120)),
                   (0.1, (60, 150), (64,), 17, (0,), (123, 53), (60, 200))],
    "hub": [(0.5, (60, 400), (64,), 17, (0, 46), (5683, 1900, 5353), (3, 30)),
            (0.5, (100, 800), (64, 128), 6, (0,), (8080, 443, 1883), (2, 25))],
}
CLASS_WEIGHTS = {"camera": 0.25, "plug": 0.2, "speaker": 0.2, "thermostat": 0.15, "hub": 0.2}


def generate_table(n_rows: int = 6000, seed: int = 7, label_noise: float = 0.04) -> pd.DataFrame:
    """Rows of integer features plus a ``device`` label, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    names = list(CLASS_WEIGHTS)
    labels = rng.choice(names, size=n_rows, p=[CLASS_WEIGHTS[c] for c in names])
    rows = [_sample_row(rng, label) for label in labels]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    flip = rng.random(n_rows) < label_noise
    labels = np.where(flip, rng.choice(names, size=n_rows), labels)
    frame["device"] = labels
    return frame


def _sample_row(rng: np.random.Generator, label: str) -> list[int]:
    profiles = PROFILES[label]
    weights = np.array([p[0] for p in profiles])
    _, length, ttls, proto, dscps, ports, iat = profiles[rng.choice(len(profiles),
                                                                    p=weights / weights.sum())]
    ttl = int(rng.choice(ttls)) - int(rng.integers(0, 12))  # hops already travelled
    return [
        int(rng.integers(length[0], length[1] + 1)),
        max(ttl, 1),
        proto,
        int(rng.choice(dscps)),
        int(rng.integers(32768, 61000)) if rng.random() < 0.85 else int(rng.choice(ports)),
        int(rng.choice(ports)) if rng.random() < 0.9 else int(rng.integers(1024, 65536)),
        int(rng.integers(iat[0], iat[1] + 1)),
    ]


def write_example(path: Path, n_rows: int = 6000, seed: int = 7) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    generate_table(n_rows, seed).to_csv(path, index=False)
    return path
