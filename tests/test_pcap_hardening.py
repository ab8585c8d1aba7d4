"""Hostile captures: every field range-checked, no blocking on special files, resync linear."""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import pytest
from adversarial import adversarial_pcap, adversarial_pcapng, epb, frame, idb, option, shb
from typer.testing import CliRunner

from homunculus.cli import app
from homunculus.data import pcap
from homunculus.data.pcap import MAX_TS_US, ingest
from homunculus.errors import DataError

runner = CliRunner()


def write(tmp_path: Path, data: bytes, name: str = "c.pcapng") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_timestamps_that_overflow_are_skipped_not_crashes(tmp_path) -> None:
    resol_s = option(9, bytes([0]))  # 10^0: one tick per second
    data = (shb() + idb(resol_s) + epb(1_700_000_000, frame()) + epb(2**64 - 1, frame())
            + idb(option(14, struct.pack("<q", 2**62))) + epb(5, frame(), iface=1)
            + idb(option(14, struct.pack("<q", -(2**40)))) + epb(5, frame(), iface=2))
    table, stats = ingest([write(tmp_path, data)], on_warning=lambda _m: None)
    usable = table[table["has_ipv4"]]
    assert usable["ts_us"].tolist() == [1_700_000_000 * 10**6]
    assert ((table["ts_us"] >= 0) & (table["ts_us"] <= MAX_TS_US)).all()
    assert sum("out of range" in w for w in stats.warnings) == 3


@pytest.mark.parametrize("resol", [bytes([127]), bytes([0x80 | 127]), bytes([19])])
def test_absurd_timestamp_resolutions_are_refused(tmp_path, resol) -> None:
    data = shb() + idb(option(9, resol)) + epb(1, frame())
    table, stats = ingest([write(tmp_path, data)], on_warning=lambda _m: None)
    assert any("resolution" in w for w in stats.warnings)
    assert not table["has_ipv4"].any()  # rows of an unusable interface carry no IPv4


def test_short_simple_packet_block_is_skipped(tmp_path) -> None:
    data = shb() + idb() + struct.pack("<III", 3, 12, 12) + epb(10**6, frame())
    table, stats = ingest([write(tmp_path, data)], on_warning=lambda _m: None)
    assert len(table) == 1 and stats.skipped == 1


def test_overflowing_capture_goes_through_simulate_and_compile_paths(tmp_path) -> None:
    data = shb() + idb(option(9, bytes([0]))) + epb(2**64 - 1, frame())
    path = write(tmp_path, data)
    result = runner.invoke(app, ["simulate", str(tmp_path / "nothing"), "--pcap", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "/dev/null", "dir"])
def test_special_files_are_refused_without_blocking(tmp_path, special) -> None:
    if special == "fifo":
        path = tmp_path / "f.pcap"
        os.mkfifo(path)
    elif special == "dir":
        path = tmp_path
    else:
        path = Path(special)
    box: dict[str, BaseException | None] = {}

    def read() -> None:
        try:
            ingest([path])
            box["error"] = None
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            box["error"] = exc

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "reading a special file blocked"
    assert isinstance(box["error"], DataError) and "not a regular file" in str(box["error"])


@pytest.mark.parametrize("make", [adversarial_pcapng, adversarial_pcap])
def test_resynchronisation_reads_each_byte_a_bounded_number_of_times(tmp_path, monkeypatch,
                                                                     make) -> None:
    read = {"bytes": 0}
    view, peek = pcap._Window.view, pcap._Window.peek

    def counting_view(self, pos, n):
        before = (self.start, len(self.buf))
        out = view(self, pos, n)
        if (self.start, len(self.buf)) != before:
            read["bytes"] += len(self.buf)
        return out

    def counting_peek(self, pos, n):
        out = peek(self, pos, n)
        if out[0] is not self.buf:
            read["bytes"] += n
        return out

    monkeypatch.setattr(pcap._Window, "view", counting_view)
    monkeypatch.setattr(pcap._Window, "peek", counting_peek)
    path = write(tmp_path, make(3 << 20))
    ingest([path], on_warning=lambda _m: None)
    assert read["bytes"] <= 3 * path.stat().st_size
