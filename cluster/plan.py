"""The per-host plan: the files a host gets and the ordered, idempotent steps that apply them.

One plan, two appliers. The Pulumi program maps every ``Step`` to a ``remote.Command`` (its
``command`` as ``create``, its ``stdin`` as ``stdin``, its ``digest`` in ``triggers``); the lab
runs the very same command with the very same stdin inside its namespaces. So what the lab
proves is what Linode runs.

Rules every step keeps:
- The command text never holds a secret: secrets travel on stdin (``Step.secret`` marks them, and
  the Pulumi layer wraps such stdin in ``Output.secret``).
- Running a step twice changes nothing the second time. A step that changed something prints a
  line starting with ``CHANGED_MARK`` so appliers and tests can count real changes.
- A step re-runs only when its digest changes: its command, its stdin, or the digest of a step it
  ``watches`` (a reload watches the files it loads).
- A step names the steps it waits on by the ``Step`` object, or by a name its owner exports (a
  service's ``*_STEP`` constant, ``file_step_name(path)``); never by a name typed twice. A name
  that matches no step fails when the plan is built (``HostPlan.ordered``, ``check_remote_refs``).
"""

from __future__ import annotations

import hashlib
import shlex
import textwrap
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

STATE_DIR = "/var/lib/mailcluster"
# The one spelling of the change line; templates get it as ``changed_mark`` (cluster/render.py).
CHANGED_MARK = "mailcluster: changed"
PACKAGES_STEP = "packages"


@dataclass(frozen=True)
class FileSpec:
    """A whole file, written atomically, with its owner and mode."""

    path: str
    content: str
    mode: str = "0644"
    owner: str = "root"
    group: str = "root"
    secret: bool = False


@dataclass(frozen=True)
class Step:
    name: str
    script: str
    stdin: str = ""
    secret: bool = False
    after: tuple[str, ...] = ()  # ordering only, same host
    watch: tuple[str, ...] = ()  # ordering and re-run when these change, same host
    after_remote: tuple[tuple[str, str], ...] = ()  # (host, step): ordering across hosts
    file: FileSpec | None = None  # set for steps that install one file

    @property
    def command(self) -> str:
        """The exact command line both appliers run; the script is bash with strict modes."""
        return "bash -c " + shlex.quote("set -euo pipefail\n" + self.script)

    def own_digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.name, self.command, self.stdin):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()


@dataclass
class HostPlan:
    host: str
    steps: list[Step] = field(default_factory=list)
    packages: tuple[str, ...] = ()

    def add(self, *steps: Step) -> None:
        known = {s.name for s in self.steps}
        for step in steps:
            if step.name in known:
                raise ValueError(f"{self.host}: step {step.name!r} declared twice")
            known.add(step.name)
            self.steps.append(step)

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"{self.host}: no step {name!r}")

    def digests(self) -> dict[str, str]:
        """Each step's digest: its own inputs plus the digests of the steps it watches."""
        out: dict[str, str] = {}
        for s in self.ordered():
            h = hashlib.sha256(s.own_digest().encode())
            for w in sorted(s.watch):
                h.update(out[w].encode())
            out[s.name] = h.hexdigest()
        return out

    def ordered(self) -> list[Step]:
        """Steps in dependency order; declaration order breaks ties (stable)."""
        by_name = {s.name: s for s in self.steps}
        done: list[Step] = []
        seen: set[str] = set()
        visiting: set[str] = set()

        def visit(step: Step) -> None:
            if step.name in seen:
                return
            if step.name in visiting:
                raise ValueError(f"{self.host}: dependency cycle at step {step.name!r}")
            visiting.add(step.name)
            for dep in (*step.after, *step.watch):
                if dep not in by_name:
                    raise ValueError(f"{self.host}: step {step.name!r} needs unknown {dep!r}")
                visit(by_name[dep])
            visiting.discard(step.name)
            seen.add(step.name)
            done.append(step)

        for s in self.steps:
            visit(s)
        return done

    @property
    def files(self) -> list[FileSpec]:
        return [s.file for s in self.steps if s.file is not None]


def check_remote_refs(plans: Mapping[str, HostPlan], other_hosts: Collection[str] = ()) -> None:
    """Every ``after_remote`` (host, step) of ``plans`` names a step of one of ``plans``, or a host
    of ``other_hosts`` (another stack's node: its plan is built by its own stack, and appliers
    leave ordering across stacks to the deploy order). Raises ValueError naming the step and
    the missing reference."""
    for plan in plans.values():
        for step in plan.steps:
            for host, name in step.after_remote:
                if host in plans:
                    if name not in {s.name for s in plans[host].steps}:
                        raise ValueError(
                            f"{plan.host}: step {step.name!r} waits on unknown {name!r} of {host}"
                        )
                elif host not in other_hosts:
                    raise ValueError(
                        f"{plan.host}: step {step.name!r} waits on {name!r} of unknown host "
                        f"{host!r}"
                    )


# ---------------------------------------------------------------------------------------------
# Step builders shared by every service.

# How a step names another: the Step itself, or a name its owner exports.
StepRef = str | Step


def step_names(refs: Iterable[StepRef]) -> tuple[str, ...]:
    return tuple(r if isinstance(r, str) else r.name for r in refs)


def file_step_name(path: str) -> str:
    """The name of the step that installs ``path``: what a step waiting on that file names."""
    return f"file:{path}"


def file_step(spec: FileSpec, after: Sequence[StepRef] = ()) -> Step:
    """Install one file atomically; report a change only when its bytes, owner or mode differ.

    The content arrives on stdin, so a secret file never appears in a command line and the
    Pulumi diff of a plain file shows its lines.
    """
    path = shlex.quote(spec.path)
    script = f"""f={path}
install -d -m 0755 "$(dirname "$f")"
tmp=$(mktemp "$f.mc-XXXXXX")
trap 'rm -f "$tmp"' EXIT
cat > "$tmp"
chown {spec.owner}:{spec.group} "$tmp"
chmod {spec.mode} "$tmp"
if [ -f "$f" ] && cmp -s "$tmp" "$f" \\
   && [ "$(stat -c %U:%G:%a "$f")" = "$(stat -c %U:%G:%a "$tmp")" ]; then
  exit 0
fi
mv -f "$tmp" "$f"
trap - EXIT
echo "{CHANGED_MARK} $f"
"""
    return Step(
        name=file_step_name(spec.path),
        script=script,
        stdin=spec.content,
        secret=spec.secret,
        after=step_names(after),
        file=spec,
    )


def absent_file_step(path: str, after: Sequence[StepRef] = ()) -> Step:
    """The opposite of ``file_step``, under the same name: ``path`` is removed if present. For a
    service switched off by configuration: the step that installed the file changes its digest
    (so it runs), and switching on again changes it back (so the file is written again), in
    both appliers."""
    p = shlex.quote(path)
    return Step(
        name=file_step_name(path),
        script=f"""if [ -e {p} ] || [ -L {p} ]; then
  rm -f {p}
  echo "{CHANGED_MARK} {path} removed"
fi
""",
        after=step_names(after),
    )


def packages_step(
    packages: Iterable[str], name: str = PACKAGES_STEP, after: Sequence[StepRef] = ()
) -> Step:
    """Install Debian packages, skipping apt entirely when dpkg already has them all: lab hosts
    have no mirror, and a Linode node should not hit the mirror on every apply. ``name``: a
    service that installs its own packages (only when configured) names its step."""
    names = sorted(set(packages))
    quoted = " ".join(shlex.quote(p) for p in names)
    script = f"""pkgs=({quoted})
missing=()
for p in "${{pkgs[@]}}"; do
  st=$(dpkg-query -W -f='${{Status}}' "$p" 2>/dev/null || true)
  [ "$st" = "install ok installed" ] || missing+=("$p")
done
[ ${{#missing[@]}} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \\
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${{missing[@]}}"
echo "{CHANGED_MARK} installed ${{missing[*]}}"
"""
    return Step(name=name, script=script, after=step_names(after))


def reload_or_start(
    service: str,
    *,
    check: str = "",
    running: str = "",
    reload: str = "",
    restart: bool = False,
    start: bool = True,
) -> str:
    """Script text: reload ``service`` if it runs (its settings changed), else start it, through
    systemd (every node runs it as PID 1, the lab's too). The caller's step ``watch``es the files
    that make this needed.

    - ``check``: shell lines run first, the daemon's own checker: a bad configuration fails the
      step before anything is reloaded (STYLE: "check before reload").
    - ``running``: a shell test that the daemon runs (default: its unit is active).
    - ``reload``: the command for a running daemon (default: ``systemctl reload <service>``).
    - ``restart``: for daemons without a reload: restart a running one instead.
    - ``start=False``: a stopped daemon stays stopped (something else decides where it runs).
    """
    verb = "restart" if restart else "reload"
    running = running or f"systemctl is-active --quiet {service}"
    reload = reload or f"systemctl {verb} {service}"
    text = check.rstrip("\n") + "\n" if check else ""
    text += f"""if {running}; then
{textwrap.indent(reload, "  ")}
  echo "{CHANGED_MARK} {service} {verb}ed"
"""
    if start:
        text += f"""else
  systemctl start {service}
  echo "{CHANGED_MARK} {service} started"
"""
    return text + "fi\n"


def start_at_boot(service: str, enabled: bool = True) -> str:
    """Script text: ``service`` starts at boot, or (``enabled=False``) does not; a change is
    reported. Only "enabled" counts as starting at boot: ``systemctl is-enabled`` also answers
    static, indirect, generated, masked... (systemctl(1), "is-enabled"); a SysV script without
    a unit is enabled through systemd-sysv-install, as ``systemctl enable`` does it."""
    state = f'"$(systemctl is-enabled {service} 2>/dev/null || true)"'
    if enabled:
        return f"""if [ {state} != enabled ]; then
  systemctl enable --quiet {service}
  echo "{CHANGED_MARK} {service} started at boot"
fi
"""
    return f"""if [ {state} = enabled ]; then
  systemctl disable --quiet {service}
  echo "{CHANGED_MARK} {service} not started at boot"
fi
"""


def pidfile_alive(pidfile: str) -> str:
    """A shell test: the process of ``pidfile`` runs (for ``reload_or_start(running=...)``)."""
    return f'[ -e {pidfile} ] && kill -0 "$(cat {pidfile})" 2>/dev/null'


def script_step(
    name: str,
    script: str,
    *,
    stdin: str = "",
    secret: bool = False,
    after: Sequence[StepRef] = (),
    watch: Sequence[StepRef] = (),
    after_remote: Sequence[tuple[str, str]] = (),
) -> Step:
    return Step(
        name=name,
        script=script,
        stdin=stdin,
        secret=secret,
        after=step_names(after),
        watch=step_names(watch),
        after_remote=tuple(after_remote),
    )
