"""Base: the state directory and the kernel settings every role relies on."""

from __future__ import annotations

from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, STATE_DIR, Step, script_step

PACKAGES: tuple[str, ...] = ("rsyslog", "procps", "iproute2", "ca-certificates")


def steps(ctx: HostContext) -> list[Step]:
    sysctl = ctx.file("/etc/sysctl.d/60-mailcluster.conf")
    return [
        script_step(
            "base.state-dir",
            f"""if [ ! -d {STATE_DIR} ]; then
  install -d -m 0700 {STATE_DIR}
  echo "{CHANGED_MARK} {STATE_DIR}"
fi
""",
        ),
        # Daemons bind the shared IP even where it is not (yet) held, so a takeover needs no
        # restart: traffic arriving at the new holder finds them listening already.
        sysctl,
        script_step(
            "base.sysctl",
            "sysctl -q -p /etc/sysctl.d/60-mailcluster.conf >/dev/null\n",
            watch=(sysctl,),
        ),
    ]
