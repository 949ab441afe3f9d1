"""A rescue's calls to the Linode API: find a node's Linode and its volume by label, power the
Linode off, detach the volume, attach it to another Linode and wait until each is done.

The API token is the program's own (``LINODE_TOKEN``, as `pulumi up` reads it; read/write on
Linodes and Volumes); it travels only in the Authorization header and is never printed. Linode
acts asynchronously: each change is followed until the volume (or the Linode) shows it, as the
Terraform provider does (``WaitForVolumeLinodeID``, linode/volume/framework_resource.go).

The endpoints (api.linode.com/v4) and the rules a rescue relies on:

- a Linode by label: ``GET /linode/instances`` with ``X-Filter: {"label": L}``. Labels are
  unique per account; the program labels a node's Linode with the node's name (datacentre.py).
- its state: ``GET /linode/instances/{id}``; ``status`` ``offline`` is powered off.
- power off: ``POST /linode/instances/{id}/shutdown``; ``status`` goes through
  ``shutting_down`` to ``offline``.
- a volume by label: ``GET /volumes`` with ``X-Filter``; a node's volume is ``<node>-mail``
  (storage.volume_label); ``linode_id`` is the Linode it is attached to, null when detached.
- detach: ``POST /volumes/{id}/detach``: read_write on the volume and on the Linode. Linode
  detaches a deleted Linode's volumes itself.
- attach: ``POST /volumes/{id}/attach`` ``{"linode_id": N, "persist_across_boots": false}``:
  the volume and the Linode in the same region; a volume is attached to one Linode at a time
  (detach it first); ``persist_across_boots: false`` leaves the Linode's configuration profile
  alone and needs a running Linode; a Linode takes at most ``total_ram / 1024`` volumes (at
  least 8, at most 64).

Sources (read 2026-12-06): techdocs.akamai.com/linode-api/reference/post-attach-volume (same
region, the volume limit, ``persist_across_boots``), .../post-detach-volume,
.../filtering-and-sorting (``X-Filter``); the API 4.x reference pages "Linode View", "Linode
Shut Down" and "Volume Attach" (developers-linode.netlify.app/api/v4/...).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol

from cluster.ops.target import OpsError

API = "https://api.linode.com/v4"
TOKEN_ENV = "LINODE_TOKEN"
HTTP_TIMEOUT_S = 30
# Linode usually attaches or detaches within seconds; the provider waits up to 20 minutes.
WAIT_S = 300
POLL_S = 2.0


class Transport(Protocol):
    def __call__(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]: ...


def urllib_transport(
    method: str, url: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        raise OpsError(f"the Linode API does not answer: {e}") from e


class LinodeApi:
    def __init__(
        self,
        token: str,
        transport: Transport = urllib_transport,
        sleep: Callable[[float], None] = time.sleep,
        wait_s: float = WAIT_S,
    ) -> None:
        self._token = token
        self._transport = transport
        self._sleep = sleep
        self.wait_s = wait_s

    @classmethod
    def from_env(cls) -> LinodeApi:
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise OpsError(
                f"{TOKEN_ENV} is not set: a rescue on Linode attaches volumes through the Linode "
                "API with the program's token (read/write on Linodes and Volumes), as `pulumi up` "
                "uses it; export it in this shell"
            )
        return cls(token)

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, label: str = ""
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if label:
            headers["X-Filter"] = json.dumps({"label": label})
        data = json.dumps(body).encode() if body is not None else None
        status, raw = self._transport(method, f"{API}{path}", data, headers)
        try:
            answer = json.loads(raw or b"{}")
        except ValueError:
            answer = {}
        if status >= 400 or not isinstance(answer, dict):
            errors = answer.get("errors") if isinstance(answer, dict) else None
            reasons = "; ".join(
                f"{str(e['field']) + ': ' if e.get('field') else ''}{e.get('reason', '')}"
                for e in errors or []
                if isinstance(e, dict)
            )
            raise OpsError(f"Linode API {method} {path}: HTTP {status}: {reasons or 'no reason'}")
        return answer

    def _one(self, path: str, label: str) -> dict[str, Any] | None:
        found = [
            d
            for d in self.call("GET", path, label=label).get("data", [])
            if d.get("label") == label
        ]
        return found[0] if found else None

    def instance(self, label: str) -> dict[str, Any] | None:
        return self._one("/linode/instances", label)

    def volume(self, label: str) -> dict[str, Any]:
        vol = self._one("/volumes", label)
        if vol is None:
            raise OpsError(f"Linode has no volume labelled {label!r}")
        return vol

    def power_off(self, linode_id: int) -> None:
        self.call("POST", f"/linode/instances/{linode_id}/shutdown")
        self._wait(
            lambda: self.call("GET", f"/linode/instances/{linode_id}")["status"] == "offline",
            f"Linode {linode_id} to power off",
        )

    def detach(self, volume_id: int) -> None:
        self.call("POST", f"/volumes/{volume_id}/detach")
        self._wait(
            lambda: self.call("GET", f"/volumes/{volume_id}").get("linode_id") is None,
            f"volume {volume_id} to be detached",
        )

    def attach(self, volume_id: int, linode_id: int) -> None:
        self.call(
            "POST",
            f"/volumes/{volume_id}/attach",
            {"linode_id": linode_id, "persist_across_boots": False},
        )
        self._wait(
            lambda: self.call("GET", f"/volumes/{volume_id}").get("linode_id") == linode_id,
            f"volume {volume_id} to be attached to Linode {linode_id}",
        )

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.wait_s
        while not done():
            if time.monotonic() >= deadline:
                raise OpsError(f"timed out after {self.wait_s:.0f} s waiting for {what}")
            self._sleep(POLL_S)
