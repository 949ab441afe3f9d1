#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine (as root) to run mailcluster: the Python virtualenv that
# Pulumi.yaml names (./venv), and the Debian packages the tests' checkers and the lab need.
# Idempotent: a second run installs nothing and takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host.sh: run as root (the lab makes namespaces, mounts and loop devices)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt_install() {
  apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}
missing_debs() {
  local p st
  for p in "$@"; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$st" = "install ok installed" ] || echo "$p"
  done
}

# 1. Python: a venv with the pinned requirements (Debian's python3 refuses system-wide pip).
tools=(python3 python3-venv python3-pip)
mapfile -t need < <(missing_debs "${tools[@]}")
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  apt_install "${need[@]}"
fi
if [ ! -x venv/bin/python ]; then
  python3 -m venv venv
fi
stamp=venv/.requirements.sha256
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$want" > "$stamp"
fi

# 2. Debian packages: every package a node's plan installs (the checkers are the daemons' own
# tools) plus the lab's tools. The daemons must not start on this machine: policy-rc.d says no.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\n# mailcluster: never start daemons on the build machine\nexit 101\n' \
    > /usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
fi
debconf-set-selections <<'SEL'
roundcube-core roundcube/dbconfig-install boolean false
postfixadmin postfixadmin/dbconfig-install boolean false
postfix postfix/main_mailer_type select No configuration
SEL
mapfile -t plan_pkgs < <(venv/bin/python -c \
  'from cluster.hostplan import all_packages; print("\n".join(all_packages()))')
lab_pkgs=(debootstrap zstd iproute2 util-linux swaks bind9-dnsutils psmisc procps e2fsprogs)
mapfile -t need < <(missing_debs "${plan_pkgs[@]}" "${lab_pkgs[@]}")
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  apt_install "${need[@]}"
fi
echo "setup-host.sh: ready"
