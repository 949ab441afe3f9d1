"""Run ``__main__.py`` under Pulumi mocks for a given stack config: no engine, no network.

The pattern of pulumi/examples ``testing-unit-py``: ``set_mocks`` first, then run the program.
``run_stack`` returns every registered resource (type, name, inputs with secrets still wrapped,
dependencies) and the stack's resolved outputs, so tests can assert rules over the whole graph.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import runpy
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from pulumi.runtime import rpc, settings
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.settings import get_root_resource
from pulumi.runtime.stack import wait_for_rpcs
from pulumi.runtime.sync_await import _sync_await

from cluster.material import ClusterSecrets, generate, pem_key
from cluster.pulumi import forward_dns
from cluster.pulumi.peer import OUT_CA_KEY, OUT_SECRETS

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "mailcluster"
SECRET_SIG = rpc._special_secret_sig
SIG_KEY = rpc._special_sig_key
# Public addresses the mocks hand out, per data centre (documentation ranges).
MOCK_NETS = {"dc1": "198.51.100", "dc2": "203.0.113"}


_PEM_LOCK = threading.Lock()


def _pems() -> dict[str, str]:
    # Mock providers run on the engine's worker threads: make the keys once, under a lock, so
    # every run of the session sees the same material (and so the same digests).
    with _PEM_LOCK:
        return _make_pems()


@functools.lru_cache(maxsize=1)
def _make_pems() -> dict[str, str]:
    material = generate("example.com", ["dc1"], {"dc1": ["mail.example.com"]})
    return {
        "rsa": pem_key(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "ec": pem_key(ec.generate_private_key(ec.SECP256R1())),
        "ca": material.ca_cert_pem,
        "ed25519": material.websync_ssh_key,
        "leaf": material.tls["dc1"].cert_pem.split("-----END CERTIFICATE-----")[0]
        + "-----END CERTIFICATE-----\n",
    }


@dataclass
class Registered:
    typ: str
    name: str
    urn: str
    inputs: dict[str, Any]
    state: dict[str, Any]
    id: str = ""
    dependencies: list[str] = field(default_factory=list)
    options: Options = field(default_factory=lambda: Options())


@dataclass(frozen=True)
class Options:
    """The resource options the engine would act on, as the RegisterResource request carries
    them (input names as the engine sees them: camelCase)."""

    protect: bool = False
    retain_on_delete: bool = False
    delete_before_replace: bool = False
    ignore_changes: tuple[str, ...] = ()
    replace_on_changes: tuple[str, ...] = ()
    # Explicit ``depends_on`` only: ``dependencies`` minus those any input already carries.
    depends_on: tuple[str, ...] = ()

    @staticmethod
    def of(request: Any) -> Options:
        via_inputs = {u for deps in request.propertyDependencies.values() for u in deps.urns}
        return Options(
            protect=bool(request.protect),
            retain_on_delete=bool(request.retainOnDelete),
            delete_before_replace=bool(request.deleteBeforeReplace),
            ignore_changes=tuple(request.ignoreChanges),
            replace_on_changes=tuple(request.replaceOnChanges),
            depends_on=tuple(u for u in request.dependencies if u not in via_inputs),
        )


class ClusterMocks(pulumi.runtime.Mocks):
    """Deterministic fake providers: numeric ids, addresses from the stack's mock net, real
    PEMs where the program parses them, and the given peer outputs for StackReferences."""

    def __init__(
        self,
        stack: str,
        peer_outputs: Mapping[str, Any] | None,
        previous_outputs: Mapping[str, Any] | None = None,
        renumbered: frozenset[str] = frozenset(),
    ) -> None:
        self.stack = stack
        # Nodes (labels) Linode created anew since the last run, with new public addresses.
        self.renumbered = renumbered
        self.peer_outputs = dict(peer_outputs or {})
        # This stack's own outputs from its last `up` (None: never deployed), as the engine's
        # builtin `pulumi:pulumi:readStackOutputs` would return them.
        self.previous_outputs = dict(previous_outputs) if previous_outputs is not None else None
        self.count = 0
        self.last: dict[str, Any] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.count += 1
        # Stable per resource, as a deployed resource's id is from one `up` to the next: a
        # counter would change ids with the registration order and fake diffs between runs.
        rid = str(100000 + zlib.crc32(f"{args.typ}::{args.name}".encode()) % 900000)
        state: dict[str, Any] = {}
        net = MOCK_NETS.get(self.stack, "192.0.2")
        if args.typ == "pulumi:pulumi:StackReference":
            secret = [k for k in (OUT_SECRETS, OUT_CA_KEY) if k in self.peer_outputs]
            state = {"outputs": self.peer_outputs, "secretOutputNames": secret}
        elif args.typ == "linode:index/instance:Instance":
            # From the name, not a counter: resources register concurrently, so a counter can
            # swap svr1's and svr2's addresses between two runs of the same program.
            n = int(args.name.rsplit("svr", 1)[1])
            new = 10 if args.inputs.get("label") in self.renumbered else 0
            # No private IPv4: the nodes' private addresses are their VPC interfaces' (inputs).
            state = {
                "ipAddress": f"{net}.{10 + new + n}",
                "ipv6": f"2001:db8:{self.stack[-1]}::{new + n}/128",
            }
        elif args.typ == "linode:index/instanceIp:InstanceIp":
            state = {"address": f"{net}.99"}
        elif args.typ == "linode:index/ipv6Range:Ipv6Range":
            # As Linode reports a routed range: its first address, without the prefix length.
            state = {"range": f"2001:db8:{self.stack[-1]}:a::", "isBgp": False,
                     "region": "us-east"}  # fmt: skip
        elif args.typ == "random:index/randomPassword:RandomPassword":
            # Letters and digits, recognisable, unique per resource.
            state = {"result": "MockPw" + "".join(c for c in args.name if c.isalnum())}
        elif args.typ == "tls:index/privateKey:PrivateKey":
            algorithm = args.inputs.get("algorithm")
            if algorithm == "ED25519":
                openssh = _pems()["ed25519"]
                state = {
                    "privateKeyOpenssh": openssh,
                    "privateKeyPem": openssh,
                    "privateKeyPemPkcs8": openssh,
                }
            else:
                pem = _pems()["rsa" if algorithm == "RSA" else "ec"]
                state = {"privateKeyPem": pem, "privateKeyPemPkcs8": pem}
        elif args.typ == "random:index/randomBytes:RandomBytes":
            # 32 bytes from the name: stable between runs, unique per resource.
            raw = hashlib.sha256(args.name.encode()).digest()[: int(args.inputs["length"])]
            state = {"base64": base64.b64encode(raw).decode(), "hex": raw.hex()}
        elif args.typ == "tls:index/selfSignedCert:SelfSignedCert":
            state = {"certPem": _pems()["ca"]}
        elif args.typ == "tls:index/locallySignedCert:LocallySignedCert":
            state = {"certPem": _pems()["leaf"]}
        elif args.typ == "linode:index/objectStorageBucket:ObjectStorageBucket":
            # As Linode reports it: the region's S3 host name, without a scheme.
            state = {"s3Endpoint": f"{args.inputs['region']}-1.linodeobjects.com"}
        elif args.typ == "linode:index/objectStorageKey:ObjectStorageKey":
            state = {"accessKey": "MOCKACCESS" + str(zlib.crc32(args.name.encode())),
                     "secretKey": "MockSecret" + str(zlib.crc32(args.name.encode()))}  # fmt: skip
        elif args.typ == "tls:index/certRequest:CertRequest":
            state = {"certRequestPem": "-----BEGIN CERTIFICATE REQUEST-----\n"}
        return rid, {**args.inputs, **state}

    def call(
        self, args: pulumi.runtime.MockCallArgs
    ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        if args.token == "pulumi:pulumi:readStackOutputs":
            # A stack that exists but was never deployed has no outputs.
            outputs = self.previous_outputs or {}
            return {"name": args.args.get("name"), "outputs": outputs}, []
        return {}, []


class RecordingMonitor(MockMonitor):
    """The stock mock monitor drops dependencies; keep them so tests can check ordering."""

    def __init__(self, mocks: ClusterMocks) -> None:
        super().__init__(mocks)
        self.registered: list[Registered] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        if request.type != "pulumi:pulumi:Stack":
            inputs = rpc.deserialize_properties(request.object)
            registration = self.resources[response.urn]
            self.registered.append(
                Registered(
                    request.type, request.name, response.urn, inputs, dict(registration.state),
                    str(registration.id or ""), list(request.dependencies), Options.of(request),
                )
            )  # fmt: skip
        return response

    def ReadResource(self, request: Any) -> Any:
        response = super().ReadResource(request)  # type: ignore[no-untyped-call]
        registration = self.resources[response.urn]
        self.registered.append(
            Registered(
                request.type, request.name, response.urn,
                rpc.deserialize_properties(request.properties), dict(registration.state),
                str(registration.id or ""), list(request.dependencies),
            )
        )  # fmt: skip
        return response


@dataclass
class Result:
    resources: list[Registered]
    outputs: dict[str, Any]
    secret_outputs: set[str]

    def of_type(self, suffix: str) -> list[Registered]:
        return [r for r in self.resources if r.typ.endswith(suffix)]

    def one(self, suffix: str) -> Registered:
        found = self.of_type(suffix)
        assert len(found) == 1, f"expected one {suffix}, got {[r.name for r in found]}"
        return found[0]

    def one_named(self, typ: str, name: str) -> Registered:
        return next(r for r in self.resources if r.typ == typ and r.name == name)

    def by_urn(self, urn: str) -> Registered:
        return next(r for r in self.resources if r.urn == urn)

    def peer_view(self) -> dict[str, Any]:
        """These outputs as the peer's StackReference would see them."""
        return {k: v for k, v in self.outputs.items() if v is not None}


def _glue_in_place(name: str, address: str) -> bool:
    """Every forward name resolves to its address: the registrar's glue is in place."""
    return True


# The monitor of the latest run_stack, kept when the program fails: a test can check what had
# been declared by then.
last_monitor: RecordingMonitor | None = None


def _config_value(value: Any) -> str:
    # The engine hands structured and scalar config to the program as text (lists as JSON).
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _drain() -> None:
    """Let a failed run's remaining RPCs finish (and fail) now, not inside the next run."""
    for _ in range(1000):
        try:
            _sync_await(wait_for_rpcs())
            break
        except Exception:
            continue
    settings.SETTINGS.rpc_manager.clear()
    settings.SETTINGS.outputs.clear()


def _resolve(value: Any) -> tuple[Any, bool]:
    out = pulumi.Output.from_input(value)
    return _sync_await(out.future()), bool(_sync_await(out.is_secret()))


def run_stack(
    stack: str,
    config: Mapping[str, Any],
    peer_outputs: Mapping[str, Any] | None = None,
    secret_config: Mapping[str, str] | None = None,
    previous: Result | None = None,
    resolves: Callable[[str, str], bool] | None = None,
    renumbered: frozenset[str] = frozenset(),
) -> Result:
    """Run the program for ``stack``; ``previous``: this stack's last run (its outputs are what
    the program reads back as the deployed state), ``None`` for a first deployment;
    ``resolves``: the world's DNS (default: every name resolves, the glue is in place);
    ``renumbered``: nodes Linode made anew (``--replace``), which got new public addresses."""
    global last_monitor
    forward_dns.resolves = resolves or _glue_in_place
    mocks = ClusterMocks(stack, peer_outputs, previous.outputs if previous else None, renumbered)
    monitor = last_monitor = RecordingMonitor(mocks)
    # set_mocks keeps an existing root Stack; a fresh run needs a fresh one for its outputs.
    settings.ROOT.set(None)
    settings.SETTINGS.rpc_manager.clear()
    settings.SETTINGS.outputs.clear()
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    values = {f"{PROJECT}:{k}": _config_value(v) for k, v in config.items()}
    values.update({f"{PROJECT}:{k}": v for k, v in (secret_config or {}).items()})
    pulumi.runtime.set_all_config(values, [f"{PROJECT}:{k}" for k in (secret_config or {})])
    try:
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
        _sync_await(wait_for_rpcs())
    except BaseException:
        _drain()
        raise
    root = get_root_resource()
    assert root is not None
    outputs: dict[str, Any] = {}
    secret: set[str] = set()
    for key, value in root.outputs.items():  # type: ignore[attr-defined]
        outputs[key], is_secret = _resolve(value)
        if is_secret:
            secret.add(key)
    return Result(monitor.registered, outputs, secret)


def is_wrapped_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


def plain_strings(value: Any) -> Iterator[str]:
    """Every string in ``value`` that is NOT inside a Pulumi secret."""
    if is_wrapped_secret(value):
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from plain_strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from plain_strings(v)


def unwrap(value: Any) -> Any:
    """``value`` with every secret wrapper removed."""
    if is_wrapped_secret(value):
        return unwrap(value["value"])
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def secrets_of(result: Result) -> ClusterSecrets:
    return ClusterSecrets.from_dict(result.outputs["clusterSecrets"])


def full_secrets(result: Result, material: Result) -> dict[str, Any]:
    """The ClusterSecrets dict ``result``'s plans were built with: the shared material from
    the generating stack's output plus this DC's own pair, from the mocked TLS resources."""
    from cluster.pulumi.material import _pair

    dc = result.outputs["dc"]
    shared = material.outputs["clusterSecrets"]
    key = result.one_named("tls:index/privateKey:PrivateKey", f"{dc}-tls")
    cert = result.one_named("tls:index/locallySignedCert:LocallySignedCert", f"{dc}-tls")
    pair = _pair([cert.state["certPem"], shared["ca_cert_pem"], key.state["privateKeyPemPkcs8"]])
    return {**shared, "tls": {dc: pair}}


@dataclass(frozen=True)
class Deployment:
    """The README's first deployment, under mocks, with the committed stack files: ``up -s dc1``
    (dc2 not deployed yet: dc1 is built, provisioned and serves alone), ``up -s dc2`` (built,
    provisioned, replicating dc1), ``up -s dc1`` once more (it learns dc2). Every run
    provisions: the firewalls name no node, so nothing waits for an address."""

    dc1_first: Result
    dc2: Result
    dc1: Result


@functools.lru_cache(maxsize=1)
def committed_deployment() -> Deployment:
    from cluster.stackfiles import read_stack_config

    dc1_first = run_stack("dc1", read_stack_config("dc1"))
    dc2 = run_stack("dc2", read_stack_config("dc2"), dc1_first.peer_view())
    dc1 = run_stack("dc1", read_stack_config("dc1"), dc2.peer_view(), previous=dc1_first)
    return Deployment(dc1_first, dc2, dc1)


@functools.lru_cache(maxsize=1)
def fourth_runs() -> tuple[Result, Result]:
    """After the first deployment, one more ``up`` of each stack: (dc1, dc2)."""
    from cluster.stackfiles import read_stack_config

    d = committed_deployment()
    dc1 = run_stack("dc1", read_stack_config("dc1"), d.dc2.peer_view(), previous=d.dc1)
    dc2 = run_stack("dc2", read_stack_config("dc2"), d.dc1.peer_view(), previous=d.dc2)
    return dc1, dc2


ROOT_PASSWORD = "S3cretRootPw"
# Made at run time: no key material, not even a throwaway one, is committed.
SSH_PRIVATE_KEY = (
    Ed25519PrivateKey.generate()
    .private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
    .decode()
)
VARIANT_CONFIG = {
    "volumeSizeGb": 120,
    "instanceType": "g6-standard-4",
    "imapPlaintext": True,
    "linodeSecondaryDns": True,
}


@functools.lru_cache(maxsize=1)
def variant_run() -> Result:
    """dc1 after the first deployment, with every optional setting changed (one run serves
    several tests: the mocks run costs more than the asserts)."""
    from cluster.stackfiles import read_stack_config

    deployment = committed_deployment()
    return run_stack(
        "dc1",
        {**read_stack_config("dc1"), **VARIANT_CONFIG},
        deployment.dc2.peer_view(),
        secret_config={"rootPassword": ROOT_PASSWORD, "sshPrivateKey": SSH_PRIVATE_KEY},
        previous=deployment.dc1,
    )
