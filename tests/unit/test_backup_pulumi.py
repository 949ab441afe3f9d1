"""The backup repository on the Pulumi side (mocks): dc1 owns it (its Object Storage bucket,
protected and retained, and a key limited to it, or the user's repository and keys), and both
data centres' nodes get the same repository, keys and password, as secrets only."""

from __future__ import annotations

from typing import Any

import pytest
from pulumi_harness import (
    Deployment,
    Result,
    committed_deployment,
    is_wrapped_secret,
    plain_strings,
    run_stack,
    unwrap,
)

from cluster.config import DEFAULT_REGIONS
from cluster.pulumi.provision import resource_name
from cluster.services.backup import ENV_FILE, PASSWORD_FILE
from cluster.stackfiles import read_stack_config

BUCKET = "linode:index/objectStorageBucket:ObjectStorageBucket"
KEY = "linode:index/objectStorageKey:ObjectStorageKey"
RANDOM = "random:index/randomPassword:RandomPassword"
COMMAND = "command:remote:Command"
REGION = read_stack_config("dc1").get("region", DEFAULT_REGIONS["dc1"])


@pytest.fixture(scope="module")
def deployment() -> Deployment:
    return committed_deployment()


def _stdin(result: Result, node: str, path: str) -> Any:
    return result.one_named(COMMAND, resource_name(node, f"file:{path}")).inputs["stdin"]


def test_dc1_owns_a_protected_bucket_and_a_key_for_it_alone(deployment: Deployment) -> None:
    bucket = deployment.dc1.one_named(BUCKET, "dc1-backup")
    assert bucket.options.protect and bucket.options.retain_on_delete
    assert bucket.inputs["label"] == "mailcluster-backup-example-com"
    assert bucket.inputs["region"] == REGION
    key = deployment.dc1.one_named(KEY, "dc1-backup")
    (access,) = key.inputs["bucketAccesses"]
    assert access["bucketName"] == "mailcluster-backup-example-com"
    assert access["permissions"] == "read_write"
    assert not deployment.dc2.of_type("objectStorageBucket:ObjectStorageBucket")
    assert not deployment.dc2.of_type("objectStorageKey:ObjectStorageKey")


def test_both_dcs_get_the_same_repository_keys_and_password_as_secrets(
    deployment: Deployment,
) -> None:
    envs, passwords = set(), set()
    for result, dc in ((deployment.dc1, "dc1"), (deployment.dc2, "dc2")):
        for slot in ("svr1", "svr2"):
            node = f"{dc}-{slot}"
            env, pw = _stdin(result, node, ENV_FILE), _stdin(result, node, PASSWORD_FILE)
            assert is_wrapped_secret(env) and is_wrapped_secret(pw)
            envs.add(unwrap(env))
            passwords.add(unwrap(pw))
    (env,) = envs
    (password,) = passwords
    key = deployment.dc1.one_named(KEY, "dc1-backup").state
    # The mocks answer a bucket's s3Endpoint as Linode does: "<region>-1.linodeobjects.com".
    assert f"RESTIC_REPOSITORY='s3:https://{REGION}-1.linodeobjects.com/" in env
    assert f"AWS_ACCESS_KEY_ID='{key['accessKey']}'" in env
    assert f"AWS_SECRET_ACCESS_KEY='{key['secretKey']}'" in env
    # The repository password is the stack's RandomPassword (48 letters and digits), not
    # some other value: the mocks answer each RandomPassword with a result unique to it.
    random = deployment.dc1.one_named(RANDOM, "dc1-material-backup-password")
    assert random.inputs["length"] == 48 and random.inputs["special"] is False
    assert password.strip() == random.state["result"]
    # Nowhere in plain text: not in any input of any resource; exported only in the secret
    # clusterSecrets output (for dc2's StackReference).
    for result in (deployment.dc1, deployment.dc2):
        plain = [s for r in result.resources for s in plain_strings(r.inputs)]
        assert not [s for s in plain if key["secretKey"] in s or password.strip() in s]
        exported = [k for k, v in result.outputs.items()
                    if key["secretKey"] in str(v) or password.strip() in str(v)]  # fmt: skip
        assert set(exported) <= {"clusterSecrets"} <= deployment.dc1.secret_outputs


def test_a_given_repository_needs_its_keys_and_makes_no_bucket() -> None:
    raw = {**read_stack_config("dc1"),
           "backupRepository": "s3:https://eu-central-1.linodeobjects.com/own-bucket"}  # fmt: skip
    with pytest.raises(Exception, match=r"backupAccessKey"):
        run_stack("dc1", raw)
    keys = {"backupAccessKey": "AKIAOWN", "backupSecretKey": "s3cr3t"}
    result = run_stack("dc1", raw, secret_config=keys)
    assert not result.of_type("objectStorageBucket:ObjectStorageBucket")
    exported = unwrap(result.outputs["clusterSecrets"])
    assert exported["backup_repository"] == raw["backupRepository"]
    assert (exported["backup_access_key"], exported["backup_secret_key"]) == ("AKIAOWN", "s3cr3t")
