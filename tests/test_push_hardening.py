"""``push`` refuses snapshots with out-of-range numbers, no or other labels, and deployments
whose interface is gone (root and the kernel: a real deployment on a veth pair)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from test_xdp_live import cli, compile_out, table_pipeline, veth_link

from homunculus import deploy as deploy_mod


def tampered(src: Path, dst: Path, change) -> Path:
    shutil.copytree(src, dst)
    path = dst / "xdp" / "snapshot.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return dst


def _set(path: tuple, value) -> object:
    def change(data: dict) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


TREE = ("model", "model", "trees", 0)
BAD = [
    ((*TREE, "threshold", 0), -1, "not a valid snapshot"),
    ((*TREE, "threshold", 0), 2**40, "not a valid snapshot"),
    ((*TREE, "threshold", 0), "x", "snapshot"),
    (("model", "model", "bias", 0), 2**40, "not a valid snapshot"),
    (("labels",), [], "not a valid snapshot"),
    (("labels",), ["a", "b", "c", "zz"], "differ from those deployed"),
    (("model",), {"not": "a model"}, "a corrupt snapshot"),
]


def test_push_refuses_bad_snapshots_and_vanished_interfaces(tmp_path) -> None:
    name = f"hmn_test_p{os.getpid()}"
    out = compile_out(table_pipeline(), tmp_path / "t")
    try:
        with veth_link("p") as link:
            code, text = cli("deploy", str(out), "--iface", link.receiver, "--netns", link.rx,
                             "--name", name)
            assert code == 0, text
            state = deploy_mod.state_path(name).read_text()
            for i, (path, value, needle) in enumerate(BAD):
                bad = tampered(out, tmp_path / f"bad{i}", _set(path, value))
                code, text = cli("push", str(bad), "--name", name)
                assert code == 2 and needle in " ".join(text.split()), (path, value, text)
                assert "Traceback" not in text
                assert deploy_mod.state_path(name).read_text() == state  # nothing recorded
            assert cli("push", str(out), "--name", name)[0] == 0
        # the veth pair and its namespaces are gone now
        code, text = cli("push", str(out), "--name", name)
        assert code == 2 and "is gone" in text and "nothing was pushed" in " ".join(text.split())
        assert cli("undeploy", name)[0] == 0
    finally:
        with contextlib.suppress(Exception):
            deploy_mod.undeploy(name)
