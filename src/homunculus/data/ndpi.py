"""A traffic-classification dataset from nDPI's regression tests (Debian source package ``ndpi``).

nDPI (LGPLv3, ntop) ships ~257 real captures in ``tests/pcap`` and, for each, the flows its
``ndpiReader`` found in ``tests/result/<capture>.out``: protocol, 5-tuple, application and
category. :func:`fetch_ndpi` downloads the Debian source package with apt into a cache (default
``~/.cache/homunculus/ndpi``, or ``$HOMUNCULUS_CACHE/ndpi``) and extracts only those two
folders; :func:`build_ndpi_dataset` keeps the first packets of every labelled IPv4 flow, labelled
with a coarse class mapped from nDPI's category. Nothing here is committed: see docs/ndpi-data.md.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from homunculus.data.labels import flow_key, flow_keys
from homunculus.data.pcap import IngestStats, read_packets
from homunculus.errors import DataError

DEB_SRC_LIST = Path("/etc/apt/sources.list.d/homunculus-deb-src.list")
DEFAULT_URI = "http://deb.debian.org/debian"
SUITE = "bookworm"
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap")
DONE_MARKER = ".complete"

# nDPI category -> class of the task; every category not listed maps to OTHER.
OTHER = "other"
CATEGORY_CLASSES: dict[str, str] = {
    "Web": "Web", "SocialNetwork": "Web", "Advertisement": "Web", "SoftwareUpdate": "Web",
    "ConnCheck": "Web",
    "Network": "Network", "System": "Network", "RPC": "Network",
    "VoIP": "VoIP",
    "Cloud": "Cloud", "Collaborative": "Cloud", "DataTransfer": "Cloud", "Download": "Cloud",
    "Database": "Cloud",
    "Chat": "Chat",
    "Streaming": "Streaming", "Video": "Streaming", "Music": "Streaming", "Media": "Streaming",
}
CLASSES = ("Web", "Network", "VoIP", "Cloud", "Chat", "Streaming", OTHER)
UNKNOWN = "Unknown"  # flows nDPI gave no category: not ground truth, left out
IP_PROTOS = {"TCP": 6, "UDP": 17, "ICMP": 1, "IGMP": 2, "VRRP": 112, "ICMPV6": 58}

_FLOW = re.compile(r"^\t\d+\t(?P<proto>[A-Z0-9]+) (?P<src>\S+) (?:<->|->) (?P<dst>\S+) "
                   r"(?P<rest>.*)$")
_CAT = re.compile(r"\[cat: (?P<cat>[^/\]]+)/\d+\]")
_APP = re.compile(r"\[proto: [\d.]+/(?P<app>[^\]]+)\]")


def category_class(category: str) -> str:
    """The task class of an nDPI category (see CATEGORY_CLASSES)."""
    return CATEGORY_CLASSES.get(category, OTHER)


# ---------------------------------------------------------------------------------------------
# fetching


def cache_dir(cache: Path | None = None) -> Path:
    """``cache`` if given, else $HOMUNCULUS_CACHE/ndpi, else ~/.cache/homunculus/ndpi."""
    if cache is not None:
        return Path(cache)
    root = os.environ.get("HOMUNCULUS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "homunculus") / "ndpi"


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"cannot run {' '.join(cmd)}: {e}") from e


def _apt_sources() -> list[tuple[Path, str]]:
    base = Path("/etc/apt")
    files = [base / "sources.list", *sorted((base / "sources.list.d").glob("*.list")),
             *sorted((base / "sources.list.d").glob("*.sources"))]
    return [(f, f.read_text(errors="replace")) for f in files if f.is_file()]


def _has_deb_src(sources: list[tuple[Path, str]]) -> bool:
    for path, text in sources:
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                if (re.search(r"^Types:.*\bdeb-src\b", stanza, re.M | re.I)
                        and re.search(rf"^Suites:.*\b{SUITE}\b(?!-)", stanza, re.M | re.I)):
                    return True
        elif re.search(rf"^\s*deb-src\s.*\s{SUITE}\s.*\bmain\b", text, re.M):
            return True
    return False


def _mirror(sources: list[tuple[Path, str]]) -> tuple[str, str | None]:
    """(URI, Signed-By) of the machine's Debian bookworm entry, to mirror for deb-src."""
    for path, text in sources:
        if path.suffix != ".sources":
            continue
        for stanza in re.split(r"\n\s*\n", text):
            uri = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            if uri and re.search(rf"^Suites:.*\b{SUITE}\b(?!-)", stanza, re.M) \
                    and "debian-security" not in uri.group(1):
                key = re.search(r"^Signed-By:\s*(\S+)", stanza, re.M)
                return uri.group(1), key.group(1) if key else None
    return DEFAULT_URI, None


def ensure_deb_src(log: Callable[[str], None] = print) -> bool:
    """Add a deb-src entry for Debian bookworm main if none exists; True if one was added."""
    sources = _apt_sources()
    if _has_deb_src(sources):
        return False
    uri, key = _mirror(sources)
    opts = f"[signed-by={key}] " if key else ""
    line = f"deb-src {opts}{uri} {SUITE} main\n"
    try:
        DEB_SRC_LIST.write_text(line)
    except OSError as e:
        raise DataError(f"cannot add deb-src entry {DEB_SRC_LIST} (need root): {e}") from e
    log(f"added {DEB_SRC_LIST}: {line.strip()}")
    return True


def _tarball(root: Path) -> Path | None:
    found = sorted(root.glob("ndpi_*.orig.tar.gz"))
    return found[-1] if found else None


def _download(root: Path, log: Callable[[str], None]) -> Path:
    if shutil.which("apt-get") is None:
        raise DataError("apt-get not found: the nDPI data comes from Debian's ndpi source package")
    added = ensure_deb_src(log)
    for attempt in range(2):
        if added or attempt:
            upd = _run(["apt-get", "update", "-q"])
            if upd.returncode:
                raise DataError(f"apt-get update failed: {upd.stderr.strip()[-500:]}")
        log(f"apt-get source --download-only ndpi (in {root})")
        res = _run(["apt-get", "source", "--download-only", "ndpi"], cwd=root)
        tar = _tarball(root)  # the Debian packaging tarball is often missing: ignore the exit code
        if tar is not None:
            return tar
    raise DataError(f"apt-get source ndpi gave no ndpi_*.orig.tar.gz in {root}: "
                    f"{(res.stderr or res.stdout).strip()[-500:]}")


def _extract(tar_path: Path, root: Path) -> int:
    """Extract */tests/pcap/* and */tests/result/* into root/tests; the number of files."""
    n = 0
    with tarfile.open(tar_path, "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) < 4 or parts[1] != "tests" or parts[2] not in ("pcap", "result"):
                continue
            if not member.isfile():
                continue
            member.name = "/".join(parts[1:])
            tar.extract(member, root, filter="data")
            n += 1
    return n


def fetch_ndpi(cache: Path | None = None, *, log: Callable[[str], None] = print) -> Path:
    """Download and extract nDPI's test captures and results once; the cache directory.

    Needs root and apt access to Debian (``apt-get source``). Idempotent: a populated cache is
    returned at once. The downloaded tarball is deleted after extraction.
    """
    root = cache_dir(cache)
    if (root / DONE_MARKER).is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    tar = _tarball(root) or _download(root, log)
    log(f"extracting tests/pcap and tests/result from {tar.name}")
    n = _extract(tar, root)
    if not any((root / "tests" / "result").glob("*.out")):
        raise DataError(f"{tar}: no tests/result/*.out inside (extracted {n} files)")
    (root / DONE_MARKER).write_text(f"{tar.name}\n{n} files\n")
    for junk in [tar, *root.glob("ndpi_*.dsc"), *root.glob("ndpi_*.debian.tar.*")]:
        junk.unlink(missing_ok=True)
    return root


# ---------------------------------------------------------------------------------------------
# ground truth


@dataclass(frozen=True)
class NdpiFlow:
    """One flow line of an nDPI result file (IPv4 only)."""

    proto: int
    src: int
    sport: int
    dst: int
    dport: int
    app: str
    category: str

    @property
    def key(self) -> bytes:
        return flow_key(self.src, self.dst, self.sport, self.dport, self.proto)


@dataclass
class ParseCounts:
    flows: int = 0
    ipv6: int = 0
    other: int = 0  # unknown protocol name or unparseable endpoint


def _endpoint(text: str) -> tuple[int, int] | None:
    """(IPv4 as int, port) of ``a.b.c.d:port``; None for IPv6 or garbage."""
    host, _, port = text.rpartition(":")
    try:
        return int(ipaddress.IPv4Address(host)), int(port)
    except ValueError:
        return None


def parse_ndpi_result(text: str) -> tuple[list[NdpiFlow], ParseCounts]:
    """IPv4 flows of an ``ndpiReader`` result file; IPv6 and unreadable flows are counted."""
    flows, counts = [], ParseCounts()
    for line in text.splitlines():
        m = _FLOW.match(line)
        if not m:
            continue
        counts.flows += 1
        if m["src"].startswith("["):
            counts.ipv6 += 1
            continue
        name = m["proto"]
        proto = int(name) if name.isdigit() and int(name) < 256 else IP_PROTOS.get(name)
        src, dst = _endpoint(m["src"]), _endpoint(m["dst"])
        if src is None or dst is None or proto is None:
            counts.other += 1
            continue
        cat, app = _CAT.search(m["rest"]), _APP.search(m["rest"])
        flows.append(NdpiFlow(proto, src[0], src[1], dst[0], dst[1],
                              app["app"] if app else UNKNOWN, cat["cat"] if cat else UNKNOWN))
    return flows, counts


def ndpi_captures(root: Path) -> list[tuple[Path, Path]]:
    """(capture, result file) pairs of the cache, sorted by name."""
    results = root / "tests" / "result"
    pairs = [(p, results / f"{p.name}.out") for p in sorted((root / "tests" / "pcap").iterdir())
             if p.suffix in CAPTURE_SUFFIXES]
    return [(p, r) for p, r in pairs if r.is_file()]


# ---------------------------------------------------------------------------------------------
# dataset


@dataclass
class NdpiDataset:
    """First packets of the labelled IPv4 flows of nDPI's captures."""

    table: pd.DataFrame  # packet table + label
    files: list[str]  # capture names by file_id
    flows: pd.DataFrame  # file_id, key, proto, app, category, label, packets
    category_flows: dict[str, int]  # nDPI category -> IPv4 flows in the ground truth
    stats: IngestStats
    counts: ParseCounts = field(default_factory=ParseCounts)
    ambiguous: int = 0  # 5-tuples listed twice in one file with different categories

    def summary(self) -> str:
        """Markdown: category histogram, class histogram (flows and packets), ingest counts."""
        lines = ["| nDPI category | IPv4 flows | class |", "|---|---:|---|"]
        for cat, n in sorted(self.category_flows.items(), key=lambda kv: (-kv[1], kv[0])):
            cls = "(dropped)" if cat == UNKNOWN else category_class(cat)
            lines.append(f"| {cat} | {n} | {cls} |")
        used = self.flows[self.flows["packets"] > 0]
        lines += ["", "| class | flows with packets | packets |", "|---|---:|---:|"]
        for cls in CLASSES:
            n_flows = int((used["label"] == cls).sum())
            lines.append(f"| {cls} | {n_flows} | {int((self.table['label'] == cls).sum())} |")
        c, s = self.counts, self.stats
        lines += ["", f"files {len(self.files)}, flow lines {c.flows} (IPv6 skipped {c.ipv6}, "
                  f"other skipped {c.other}, ambiguous {self.ambiguous}), packets read "
                  f"{s.packets}, skipped records {s.skipped}, truncated files "
                  f"{s.truncated_files}, rows {len(self.table)}"]
        return "\n".join(lines)


def _flow_table(pairs: list[tuple[Path, Path]], counts: ParseCounts
                ) -> tuple[pd.DataFrame, Counter[str], int]:
    rows, hist = [], Counter[str]()
    for file_id, (_, result) in enumerate(pairs):
        flows, c = parse_ndpi_result(result.read_text(errors="replace"))
        counts.flows, counts.ipv6, counts.other = (counts.flows + c.flows, counts.ipv6 + c.ipv6,
                                                   counts.other + c.other)
        hist.update(f.category for f in flows)
        rows += [(file_id, f.key, f.proto, f.app, f.category) for f in flows]
    flows = pd.DataFrame(rows, columns=["file_id", "key", "proto", "app", "category"])
    n_cats = flows.groupby(["file_id", "key"])["category"].transform("nunique")
    ambiguous = int(flows.loc[n_cats > 1, ["file_id", "key"]].drop_duplicates().shape[0])
    flows = flows[(n_cats == 1) & (flows["category"] != UNKNOWN)]
    flows = flows.drop_duplicates(["file_id", "key"]).reset_index(drop=True)
    flows["label"] = flows["category"].map(category_class)
    return flows, hist, ambiguous


def build_ndpi_dataset(cache: Path | None = None, *, first_n: int = 8,
                       max_files: int | None = None, seed: int = 0,
                       on_warning: Callable[[str], None] | None = None) -> NdpiDataset:
    """Packet table of the first ``first_n`` packets of each labelled IPv4 flow.

    Flows are joined to packets by (file_id, canonical 5-tuple); flows nDPI left without a
    category, and 5-tuples given two categories in one file, are left out. ``max_files`` picks
    that many captures at random (``seed``). Fetches the data first if the cache is empty.
    """
    if first_n < 1:
        raise ValueError("first_n must be at least 1")
    pairs = ndpi_captures(fetch_ndpi(cache))
    if max_files is not None and max_files < len(pairs):
        pick = np.random.default_rng(seed).choice(len(pairs), size=max_files, replace=False)
        pairs = [pairs[i] for i in sorted(pick)]
    counts = ParseCounts()
    flows, hist, ambiguous = _flow_table(pairs, counts)
    label_of = {(f, k): lab for f, k, lab in flows[["file_id", "key", "label"]].itertuples(
        index=False)}
    stats, parts = IngestStats(), []
    for chunk in read_packets([p for p, _ in pairs], stats=stats, on_warning=on_warning):
        keys = flow_keys(chunk)
        labels = np.array([label_of.get(fk) for fk in zip(chunk["file_id"], keys, strict=True)],
                          dtype=object)
        keep = chunk["has_ipv4"].to_numpy(bool) & pd.notna(labels)
        part = chunk[keep].copy()
        part["label"], part["_key"] = labels[keep].astype(str), keys[keep]
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    table = table[table.groupby(["file_id", "_key"]).cumcount() < first_n]
    per_flow = table.groupby(["file_id", "_key"]).size().rename("packets")
    flows = flows.join(per_flow, on=["file_id", "key"]).fillna({"packets": 0})
    flows["packets"] = flows["packets"].astype(int)
    return NdpiDataset(table.drop(columns="_key").reset_index(drop=True),
                       [p.name for p, _ in pairs], flows, dict(hist), stats, counts, ambiguous)


def load_ndpi_packets(first_n: int = 8, max_files: int | None = None, seed: int = 0,
                      cache: Path | None = None) -> tuple[pd.DataFrame, dict[str, Any], str]:
    """(labelled packet table, ingest summary, source description) for the traffic loader."""
    ds = build_ndpi_dataset(cache, first_n=first_n, max_files=max_files, seed=seed,
                            on_warning=lambda m: None)
    summary = {"packets": ds.stats.packets, "skipped": ds.stats.skipped,
               "truncated_files": ds.stats.truncated_files, "malformed": ds.stats.malformed,
               "files": len(ds.files), "flows": int((ds.flows["packets"] > 0).sum()),
               "ipv6_flows_skipped": ds.counts.ipv6}
    marker = cache_dir(cache) / DONE_MARKER
    release = marker.read_text().split("\n", 1)[0] if marker.is_file() else "ndpi"
    source = (f"nDPI test captures ({release}, LGPL-3.0; {len(ds.files)} files, first {first_n} "
              "packets per flow)")
    return ds.table, summary, source


def split_by_file(table: pd.DataFrame, test_fraction: float, seed: int = 0
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) with whole capture files on each side, about ``test_fraction`` of files.

    No file_id (hence no flow) is in both. Needs at least two files.
    """
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    files = np.unique(table["file_id"].to_numpy())
    if len(files) < 2:
        raise DataError(f"cannot split by file: {len(files)} capture file(s) in the table")
    n_test = min(max(1, round(test_fraction * len(files))), len(files) - 1)
    test_files = np.random.default_rng(seed).permutation(files)[:n_test]
    in_test = table["file_id"].isin(test_files).to_numpy()
    return table[~in_test].reset_index(drop=True), table[in_test].reset_index(drop=True)


def main() -> None:
    """Fetch, build with defaults and print the summary (``python -m homunculus.data.ndpi``)."""
    print(build_ndpi_dataset(on_warning=lambda m: None).summary())


if __name__ == "__main__":
    main()
