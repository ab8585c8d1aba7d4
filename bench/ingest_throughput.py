"""Packets per second of read_packets over every nDPI test capture (fetched once into the cache).

    python bench/ingest_throughput.py [--repeat 3] [--chunk-size 65536] [--cache DIR]

Prints a markdown table: files, packets, skipped records, truncated files, best wall time over
the repeats, and packets/s. The first run also downloads the data (not timed).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from homunculus.data.ndpi import CAPTURE_SUFFIXES, fetch_ndpi
from homunculus.data.pcap import IngestStats, read_packets


def run(paths: list[Path], chunk_size: int) -> tuple[IngestStats, float]:
    stats = IngestStats()
    start = time.perf_counter()
    for _ in read_packets(paths, chunk_size=chunk_size, stats=stats, on_warning=lambda m: None):
        pass
    return stats, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=65536)
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()
    root = fetch_ndpi(args.cache)
    paths = sorted(p for p in (root / "tests" / "pcap").iterdir() if p.suffix in CAPTURE_SUFFIXES)
    runs = [run(paths, args.chunk_size) for _ in range(args.repeat)]
    stats, best = runs[0][0], min(sec for _, sec in runs)
    size_mb = sum(p.stat().st_size for p in paths) / 1e6
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"{size_mb:.0f} MB of captures; best of {args.repeat}\n")
    print("| files | packets | skipped | truncated files | seconds | packets/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(paths)} | {stats.packets} | {stats.skipped} | {stats.truncated_files} | "
          f"{best:.2f} | {stats.packets / best:,.0f} |")


if __name__ == "__main__":
    main()
