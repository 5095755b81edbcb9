"""`make test`'s set-up script: as root an install failure fails the run (no silent skips); as a
plain user it installs nothing and says which tests will skip."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "setup-test-deps"


def run_with(tmp_path: Path, uid: int, apt_rc: int) -> subprocess.CompletedProcess:
    """The script on a PATH that has no chromium, g++ or PostgreSQL, a fake `id` and a fake `apt-get`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname",):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (bin_dir / "apt-get").write_text(f"#!/bin/sh\necho \"apt-get $*\" >> {tmp_path}/apt.log\nexit {apt_rc}\n")
    for f in ("id", "apt-get"):
        (bin_dir / f).chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    return subprocess.run(["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not Path("/bin/bash").exists() or os.name != "posix", reason="needs bash")
def test_an_install_failure_as_root_fails_the_run(tmp_path):
    r = run_with(tmp_path, uid=0, apt_rc=100)
    assert r.returncode == 1, r.stderr
    assert "installing chromium chromium-driver g++ postgresql" in r.stderr and "apt-get update failed" in r.stderr


@pytest.mark.skipif(not Path("/bin/bash").exists() or os.name != "posix", reason="needs bash")
def test_a_plain_user_gets_skips_named_not_an_install(tmp_path):
    r = run_with(tmp_path, uid=1000, apt_rc=0)
    assert r.returncode == 0, r.stderr
    assert "not root with apt-get: the tests that need them will skip" in r.stderr
    assert not (tmp_path / "apt.log").exists()


@pytest.mark.skipif(not Path("/bin/bash").exists() or os.name != "posix", reason="needs bash")
def test_an_install_that_leaves_no_working_browser_fails_the_run(tmp_path):
    r = run_with(tmp_path, uid=0, apt_rc=0)  # apt-get "succeeds" but installs nothing
    assert r.returncode == 1 and "chromium is installed but does not run" in r.stderr, r.stderr
