"""The lab's base root filesystem: Debian 13 minbase plus every package any host's plan needs.

The package list is ``all_packages()`` (the union of the services' ``PACKAGES``) plus the few
tools the lab itself needs in a host, so the base and the plan never drift: a package a service
forgot to declare is missing in the lab exactly as it would be missing on a node without a mirror.

A built base is cached as ``base-<key>.tar.zst``; the key hashes the recipe and the package list,
so a changed list builds a new base. When a cached base with the same recipe holds a subset of the
list, the new one is made from it by installing only the missing packages (additive, so the result
is what a cold build gives, minus a fresh debootstrap).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cluster.hostplan import all_packages
from cluster.lab.paths import base_dir, cache_dir
from cluster.lab.run import LabError, Progress, run

SUITE = "trixie"
# What the lab needs inside a host beyond the plan: systemd as PID 1 (a Linode image has it; a
# minbase root does not), a syslog daemon for /dev/log, `ip` and `ping` for status and tests,
# pgrep for status. The client uses this machine's python3, not the base.
LAB_PACKAGES = ("systemd", "systemd-sysv", "dbus", "rsyslog", "iproute2", "iputils-ping", "procps",
                "bird2")  # fmt: skip
RECIPE_VERSION = "5"
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
# A machine whose apt has no Debian mirror (an Ubuntu CI runner): deb.debian.org, or these.
MIRROR_ENV = "MAILCLUSTER_DEBIAN_MIRROR"
SECURITY_ENV = "MAILCLUSTER_DEBIAN_SECURITY_MIRROR"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

DPKG_EXCLUDES = """\
# lab base: no documentation, manual pages or translations (smaller, faster to copy)
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""

# Packages ask questions at install time; these are the answers a Linode node gets from the plan
# (the plan writes the real configuration afterwards).
PRESEED = """\
postfix postfix/main_mailer_type select No configuration
roundcube-core roundcube/dbconfig-install boolean false
postfixadmin postfixadmin/dbconfig-install boolean false
"""

# The recipe, run in a chroot inside a private mount namespace. No daemon may start while
# packages install (policy-rc.d), and none of the image's identity may be shared by the hosts.
INSTALL_SCRIPT = r"""
set -euo pipefail
root=$1; shift
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
cp /etc/resolv.conf "$root/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
chroot "$root" debconf-set-selections < "$root/tmp/preseed"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
chroot "$root" apt-get update -q
chroot "$root" apt-get install -y -q --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
chroot "$root" apt-get clean
rm -f "$root/usr/sbin/policy-rc.d" "$root/tmp/preseed" "$root"/etc/ssh/ssh_host_*
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/apt/*
: > "$root/etc/machine-id"
# dbus's postinst made a machine id for the image, and a first boot copies it into
# /etc/machine-id (systemd prefers it to a random one): every host had the same id. Debian's own
# installs link the two, so each host's systemd makes its own at its first boot.
ln -sf /etc/machine-id "$root/var/lib/dbus/machine-id"
: > "$root/etc/resolv.conf"
# Hosts must never read this machine's kernel log.
if [ -f "$root/etc/rsyslog.conf" ]; then
  sed -i -E 's/^(module\(load="imklog".*)$/# lab: no kernel log in a namespace host: \1/' \
    "$root/etc/rsyslog.conf"
fi
"""


@dataclass(frozen=True)
class BaseSpec:
    mirror: str
    packages: tuple[str, ...]

    @property
    def recipe_key(self) -> str:
        return _sha(RECIPE_VERSION, self.mirror, DPKG_EXCLUDES, PRESEED, INSTALL_SCRIPT)

    @property
    def key(self) -> str:
        return _sha(self.recipe_key, *self.packages)[:16]


def _sha(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def apt_mirror(sources: Path = SOURCES) -> str:
    """The Debian mirror: ``$MAILCLUSTER_DEBIAN_MIRROR``, else the one this machine's apt uses
    (deb822 sources; whatever release this machine runs, the mirror carries the base's too),
    else deb.debian.org when this machine has none."""
    if os.environ.get(MIRROR_ENV):
        return os.environ[MIRROR_ENV]
    if not sources.exists():
        return DEFAULT_MIRROR
    text = sources.read_text()
    for stanza in re.split(r"\n\s*\n", text):
        uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
        suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
        if uris and suites and any(not x.endswith("-security") for x in suites.group(1).split()):
            return uris.group(1)
    raise LabError(f"no Debian mirror (a stanza with a release) in {sources}")


def spec() -> BaseSpec:
    return BaseSpec(apt_mirror(), tuple(sorted({*all_packages(), *LAB_PACKAGES})))


def _archive(key: str) -> Path:
    return cache_dir() / f"base-{key}.tar.zst"


def archive_path(key: str) -> Path:
    """The cached archive of base ``key`` (the checkers unpack their own copy from it)."""
    return _archive(key)


def cached(key: str) -> bool:
    return _archive(key).exists()


def _meta(key: str) -> Path:
    return cache_dir() / f"base-{key}.json"


def _stamp() -> Path:
    return base_dir() / ".mailcluster-lab-base"


# What the lab runs on this machine, by the package that provides it. The client ("the
# internet") runs this machine's own tools: the tests ping and dig from it.
HOST_TOOLS = {"debootstrap": "debootstrap", "zstd": "zstd", "ip": "iproute2",
              "unshare": "util-linux", "nsenter": "util-linux", "setpriv": "util-linux",
              "blkid": "util-linux",
              "losetup": "mount", "systemd-nspawn": "systemd-container",
              "ping": "iputils-ping", "dig": "bind9-dnsutils",
              # The ManageSieve client of the tests (a user's, from the client namespace).
              "sieve-connect": "sieve-connect",
              # A user's web browser (cluster/lab/browser.py), its driver and its trust store.
              "chromium": "chromium", "chromedriver": "chromium-driver",
              "certutil": "libnss3-tools"}  # fmt: skip


def ensure_host_tools() -> None:
    """Install what the lab needs on a fresh Debian 12 machine (the README's first command)."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        run(["apt-get", "update", "-q"], timeout=600)
        run(["apt-get", "install", "-y", "-q", *missing], timeout=600)


def debian_sources(mirror: str) -> str:
    """The chroot's apt sources: the base's release, its updates and its security updates, as a
    Debian 13 installation has them (never this machine's own file: it names its own release)."""
    security = os.environ.get(SECURITY_ENV) or DEFAULT_SECURITY_MIRROR
    return (
        f"Types: deb\nURIs: {mirror}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n"
        f"Signed-By: {KEYRING}\n\n"
        f"Types: deb\nURIs: {security}\nSuites: {SUITE}-security\nComponents: main\n"
        f"Signed-By: {KEYRING}\n"
    )


def _install(root: Path, packages: tuple[str, ...], mirror: str = DEFAULT_MIRROR) -> None:
    (root / "tmp" / "preseed").write_text(PRESEED)
    dpkg_cfg = root / "etc" / "dpkg" / "dpkg.cfg.d" / "01-mailcluster-lab-nodoc"
    dpkg_cfg.write_text(DPKG_EXCLUDES)
    target = root / "etc" / "apt" / "sources.list.d" / "debian.sources"
    target.write_text(debian_sources(mirror))
    legacy = root / "etc" / "apt" / "sources.list"
    if legacy.exists():
        legacy.unlink()  # the deb822 file above says the same, plus security updates
    run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", INSTALL_SCRIPT, "install",
         str(root), *packages],
        timeout=1800,
    )  # fmt: skip


def _save(root: Path, s: BaseSpec, progress: Progress) -> None:
    cache_dir().mkdir(parents=True, exist_ok=True)
    tmp = _archive(s.key).with_suffix(".tmp")
    run(["tar", "--numeric-owner", "--xattrs", "--acls", "-I", "zstd -T0 -3", "-C", str(root),
         "-cf", str(tmp), "."], timeout=600)  # fmt: skip
    tmp.rename(_archive(s.key))
    _meta(s.key).write_text(
        json.dumps({"recipe": s.recipe_key, "packages": list(s.packages), "mirror": s.mirror})
    )
    progress(f"base cached as {_archive(s.key)} ({_archive(s.key).stat().st_size >> 20} MB)")


def _restore(key: str, root: Path) -> None:
    root.mkdir(parents=True)
    run(["tar", "--numeric-owner", "--xattrs", "--acls", "-I", "zstd -T0", "-C", str(root),
         "-xf", str(_archive(key))], timeout=600)  # fmt: skip


def _subset_base(s: BaseSpec) -> str | None:
    """A cached base of the same recipe whose packages are all wanted: the largest such."""
    best: tuple[int, str] | None = None
    for meta in cache_dir().glob("base-*.json"):
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        key = meta.name.removeprefix("base-").removesuffix(".json")
        pkgs = set(data.get("packages", ()))
        if (
            data.get("recipe") == s.recipe_key
            and pkgs <= set(s.packages)
            and _archive(key).exists()
            and (best is None or len(pkgs) > best[0])
        ):
            best = (len(pkgs), key)
    return best[1] if best else None


def _wipe(path: Path) -> None:
    if path.exists() or path.is_symlink():
        shutil.rmtree(path)


@contextlib.contextmanager
def _build_lock(key: str) -> Iterator[None]:
    """One build of a base at a time on this machine: the cache (and its ``build-<key>`` work
    directory) is shared by every lab, and a second build would wipe the first one's chroot in
    the middle of its dpkg run."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / f"build-{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build(s: BaseSpec, progress: Progress) -> float:
    """Build the base for ``s`` into the cache (not into the lab). Returns seconds taken."""
    ensure_host_tools()
    t0 = time.monotonic()
    work = cache_dir() / f"build-{s.key}"
    _wipe(work)
    cache_dir().mkdir(parents=True, exist_ok=True)
    try:
        parent = _subset_base(s)
        if parent is not None:
            progress(f"base: extending cached base {parent} with the new packages")
            _restore(parent, work)
        else:
            progress(f"base: debootstrap {SUITE} minbase from {s.mirror}")
            run(["debootstrap", "--variant=minbase", SUITE, str(work), s.mirror], timeout=1800)
        progress(f"base: installing {len(s.packages)} packages in the chroot")
        _install(work, s.packages, s.mirror)
        _save(work, s, progress)
    finally:
        _wipe(work)
    return time.monotonic() - t0


def ensure(progress: Progress, *, rebuild: bool = False) -> BaseSpec:
    """Make ``base_dir()`` hold the base for the current package list: keep it, restore it from
    the cache, or build it first."""
    s = spec()
    stamp = _stamp()
    if not rebuild and stamp.exists() and stamp.read_text().strip() == s.key:
        return s
    if rebuild or not _archive(s.key).exists():
        with _build_lock(s.key):
            # Another lab on this machine may have built it while this one waited.
            if rebuild or not _archive(s.key).exists():
                secs = build(s, progress)
                progress(f"base: built in {secs:.0f}s")
    root = base_dir()
    tmp = root.with_name("base.new")
    _wipe(tmp)
    t0 = time.monotonic()
    _restore(s.key, tmp)
    (tmp / stamp.name).write_text(s.key + "\n")
    if root.exists():
        old = root.with_name("base.old")
        _wipe(old)
        root.rename(old)
        _wipe(old)
    tmp.rename(root)
    progress(f"base: {s.key} restored in {time.monotonic() - t0:.1f}s")
    return s


def environment_ok() -> bool:
    return os.geteuid() == 0
