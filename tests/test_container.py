"""The Docker image's entry point (nml.container): mounted directories the image's user cannot
write are named with the fix before any command runs."""

from __future__ import annotations

import os

import pytest

from nml.container import can_write, main, unwritable


def test_a_directory_docker_created_as_root_is_not_writable_for_the_image_user(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    owner = runs.stat().st_uid
    runs.chmod(0o755)  # what Docker's mkdir leaves: rwxr-xr-x, owned by root
    assert can_write(runs, owner, [])
    other = owner + 1000
    assert not can_write(runs, other, [])  # the image's user, uid 1000, against root's directory
    assert can_write(runs, 0, [])  # root may always
    runs.chmod(0o775)
    assert can_write(runs, other, [runs.stat().st_gid]) and not can_write(runs, other, [])
    runs.chmod(0o777)
    assert can_write(runs, other, [])
    runs.chmod(0o755)
    (problem,) = unwritable([str(runs), str(tmp_path / "absent"), ""], other, [])
    assert str(runs) in problem and f"uid {other}" in problem and f"uid {owner}" in problem


def test_the_entry_point_refuses_an_unwritable_mount_and_names_the_fix(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    runs.mkdir(mode=0o755)
    monkeypatch.setenv("NML_WRITABLE", str(runs))
    monkeypatch.setattr(os, "geteuid", lambda: runs.stat().st_uid + 1000)  # not the owner, not root
    monkeypatch.setattr(os, "getgroups", lambda: [])
    monkeypatch.setattr(os, "getegid", lambda: runs.stat().st_gid + 1000)
    ran = []
    monkeypatch.setattr(os, "execvp", lambda *a: ran.append(a))
    assert main(["data", "embedded", "--out", "data/embedded"]) == 1 and not ran
    err = capsys.readouterr().err
    assert f"nml: error: {runs} is not writable" in err and "mkdir -p data runs" in err and "--user" in err
    assert main(["--help"]) == 0 and ran == [("nml", ["nml", "--help"])]  # help writes nothing
    monkeypatch.setenv("NML_WRITABLE", "")  # the check off
    assert main(["fit"]) == 0 and ran[-1] == ("nml", ["nml", "fit"])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the directory to another user")
def test_a_writable_mount_runs_the_command(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    os.chown(runs, 1000, 1000)
    monkeypatch.setenv("NML_WRITABLE", str(runs))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getgroups", lambda: [1000])
    ran = []
    monkeypatch.setattr(os, "execvp", lambda *a: ran.append(a))
    assert main(["fit", "--config", "pretrain_supervised.yaml"]) == 0 and ran[0][1][1] == "fit"
