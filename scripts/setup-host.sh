#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine to run mailcluster, as root (no sudo needed; with sudo if you
# are not root): the Python virtualenv that Pulumi.yaml names (./venv) and the few Debian
# packages the lab needs on this machine (debootstrap, zstd, the namespace and mount tools,
# systemd-nspawn, which boots the lab's nodes).
# The mail daemons are NOT installed here: the lab's hosts and the daemons' checkers (tests/render)
# run them inside the lab's base root filesystem, built by debootstrap (cluster/lab/base.py).
# Idempotent and non-interactive: a second run installs nothing and takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host.sh: run as root (it installs Debian packages; the lab makes namespaces," \
    "mounts and loop devices). Not root? sudo scripts/setup-host.sh" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt_install() {
  apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" </dev/null
}
missing_debs() {
  local p st
  for p in "$@"; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$st" = "install ok installed" ] || echo "$p"
  done
}

# 0. An older version of this script left a host-wide policy-rc.d that refuses every daemon
# start on this machine, forever. Remove that one (and only that one: recognised by its marker).
old=/usr/sbin/policy-rc.d
if [ -f "$old" ] && grep -qF 'mailcluster: never start daemons on the build machine' "$old"; then
  rm -f "$old"
  echo "setup-host.sh: removed $old that an older mailcluster set-up left"
fi

# 1. Debian packages: Python for the venv, and what the lab and the checkers' runner use on this
# machine (every package of cluster/lab/base.py's HOST_TOOLS is here: a unit test checks it).
# chromium, its driver and NSS's certutil: the lab tests' web browser (cluster/lab/browser.py).
# None of them starts a daemon, so no policy-rc.d is needed.
debs=(python3 python3-venv python3-pip
      debootstrap debian-archive-keyring zstd tar iproute2 util-linux mount e2fsprogs
      systemd-container bind9-dnsutils iputils-ping psmisc procps swaks sieve-connect
      chromium chromium-driver libnss3-tools)
mapfile -t need < <(missing_debs "${debs[@]}")
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  apt_install "${need[@]}"
fi

# 2. Python: a venv with the pinned requirements (Debian's python3 refuses system-wide pip).
if [ ! -x venv/bin/python ]; then
  python3 -m venv venv
fi
stamp=venv/.requirements.sha256
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # pip only when a pin is not installed yet (a venv made by hand may already hold them all).
  if ! venv/bin/python scripts/pins-installed.py requirements-dev.txt; then
    venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt </dev/null
  fi
  echo "$want" > "$stamp"
fi

# 3. A hint, never an action: daemons an older set-up installed here only for the checkers.
mapfile -t old_daemons < <(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' \
  postfix dovecot-core mariadb-server bind9 apache2 rspamd 2>/dev/null | awk '/^ii/ {print $2}')
if [ ${#old_daemons[@]} -gt 0 ]; then
  echo "setup-host.sh: note: ${old_daemons[*]} are installed on this machine; mailcluster no" \
    "longer needs them here (the checkers run in the lab's base). Remove them if nothing else does."
fi
echo "setup-host.sh: ready"
