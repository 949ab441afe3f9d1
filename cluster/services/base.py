"""Base: the state directory, host name and the kernel settings every role relies on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.plan import STATE_DIR, Step, script_step

if TYPE_CHECKING:
    from cluster.hostplan import HostContext

PACKAGES: tuple[str, ...] = ("cron", "rsyslog", "procps", "iproute2", "ca-certificates")


def steps(ctx: HostContext) -> list[Step]:
    return [
        script_step(
            "base.state-dir",
            f"""if [ ! -d {STATE_DIR} ]; then
  install -d -m 0700 {STATE_DIR}
  echo "mailcluster: changed {STATE_DIR}"
fi
""",
        ),
        # Daemons bind the shared IP even where it is not (yet) held, so a takeover needs no
        # restart: traffic arriving at the new holder finds them listening already.
        ctx.file("/etc/sysctl.d/60-mailcluster.conf"),
        script_step(
            "base.sysctl",
            "sysctl -q -p /etc/sysctl.d/60-mailcluster.conf >/dev/null\n",
            watch=("file:/etc/sysctl.d/60-mailcluster.conf",),
        ),
    ]
