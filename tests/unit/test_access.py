"""The access steps run for real against stand-ins for /etc/shadow and chpasswd: idempotent, and
the password never on a command line or in the output."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cluster.plan import CHANGED_MARK
from cluster.services import access

PASSWORD = "Corr3ct-horse battery"


def _crypt(password: str, salt: str) -> str:
    out = subprocess.run(
        ["perl", "-e", "print crypt(<STDIN>, $ARGV[0])", salt],
        input=password, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout


def _run_password_step(
    tmp: Path, current_hash: str, stdin: str
) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "getent").write_text(f"#!/bin/sh\necho 'root:{current_hash}:19000:0:99999:7:::'\n")
    # The stand-in records its arguments and what it was fed.
    (bin_dir / "chpasswd").write_text(f'#!/bin/sh\necho "$@" > {tmp}/args\ncat > {tmp}/fed\n')
    for tool in ("getent", "chpasswd"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    script = "set -euo pipefail\n" + access.PASSWORD_SCRIPT
    return subprocess.run(["bash", "-c", script], input=stdin, env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip


def test_root_password_is_set_once_from_stdin(tmp_path: Path) -> None:
    old = _crypt("something else", "$6$saltsalt$")
    first = _run_password_step(tmp_path, old, PASSWORD)
    assert CHANGED_MARK in first.stdout
    assert (tmp_path / "fed").read_text() == f"root:{PASSWORD}\n"
    assert (tmp_path / "args").read_text().strip() == ""  # nothing on the command line
    assert PASSWORD not in first.stdout + first.stderr
    assert PASSWORD not in access.PASSWORD_SCRIPT
    (tmp_path / "fed").unlink()
    # Second apply: the current hash matches, nothing changes.
    second = _run_password_step(tmp_path, _crypt(PASSWORD, "$6$saltsalt$"), PASSWORD)
    assert second.stdout == "" and not (tmp_path / "fed").exists()


def test_no_root_password_leaves_linodes_random_one(tmp_path: Path) -> None:
    out = _run_password_step(tmp_path, "!", "")
    assert out.stdout == "" and not (tmp_path / "fed").exists()


def test_authorized_keys_written_whole_0600_and_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "root" / ".ssh" / "authorized_keys"
    script = "set -euo pipefail\n" + access.KEYS_SCRIPT.replace(access.AUTHORIZED_KEYS, str(target))
    keys = "ssh-ed25519 AAAA one\nssh-ed25519 AAAA two\n"
    target.parent.mkdir(parents=True)
    target.write_text("ssh-ed25519 AAAA stale\n")
    first = subprocess.run(["bash", "-c", script], input=keys, capture_output=True, text=True,
                           check=True)  # fmt: skip
    assert CHANGED_MARK in first.stdout
    assert target.read_text() == keys
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    second = subprocess.run(["bash", "-c", script], input=keys, capture_output=True, text=True,
                            check=True)  # fmt: skip
    assert second.stdout == ""
    assert sorted(p.name for p in target.parent.iterdir()) == ["authorized_keys"]
