"""The base's Debian mirror on a machine that is not Debian (an Ubuntu CI runner): a fallback,
and apt sources for the base's release (trixie), its updates and its security updates, written
for the chroot."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.lab import base


@pytest.mark.parametrize(
    "text",
    [
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n",
        # The security stanza first, and a comment inside a stanza.
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n",
    ],
    ids=["main-first", "security-first"],
)
def test_mirror_from_this_machines_sources(
    text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(base.MIRROR_ENV, raising=False)
    sources = tmp_path / "debian.sources"
    sources.write_text(text)
    assert base.apt_mirror(sources) == "http://mirror.example/debian"


def test_mirror_fallback_and_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(base.MIRROR_ENV, raising=False)
    assert base.apt_mirror(tmp_path / "absent") == "http://deb.debian.org/debian"
    monkeypatch.setenv(base.MIRROR_ENV, "http://local.example/debian")
    assert base.apt_mirror(tmp_path / "absent") == "http://local.example/debian"


def test_sources_written_for_the_chroot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(base.SECURITY_ENV, raising=False)
    text = base.debian_sources("http://deb.debian.org/debian")
    stanzas = [dict(ln.split(": ", 1) for ln in s.splitlines()) for s in text.split("\n\n")]
    assert [(s["URIs"], s["Suites"]) for s in stanzas] == [
        ("http://deb.debian.org/debian", "trixie trixie-updates"),
        ("http://deb.debian.org/debian-security", "trixie-security"),
    ]
    assert {s["Signed-By"] for s in stanzas} == {base.KEYRING}
    # Another mirror is another base: the key follows it.
    a = base.BaseSpec("http://deb.debian.org/debian", ("postfix",))
    b = base.BaseSpec("http://local.example/debian", ("postfix",))
    assert a.key != b.key
