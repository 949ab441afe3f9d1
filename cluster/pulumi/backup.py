"""The backup repository on the Pulumi side: the user's (``backupRepository`` with the
``backupAccessKey``/``backupSecretKey`` config secrets) or an Object Storage bucket and a key
limited to it, made by the stack that owns the cluster's material (dc1).

Either way the result is three ``ClusterSecrets`` fields (``backup_repository``,
``backup_access_key``, ``backup_secret_key``) that travel with the rest of the material, so dc2
gets them through its StackReference as it gets the passwords. The bucket is protected and
retained: a `pulumi destroy` or a replacement must not take the backups with the cluster.
"""

from __future__ import annotations

import pulumi
import pulumi_linode as linode

from cluster.config import ConfigError, StackConfig

LABEL_MAX = 63  # S3 bucket names: 3 to 63 characters


def bucket_label(config: StackConfig) -> str:
    """Object Storage bucket names are unique per region across all accounts: derive it from the
    mail domain (unique to its owner)."""
    return f"mailcluster-backup-{config.domain.replace('.', '-')}"[:LABEL_MAX].rstrip("-")


def repository(endpoint: str, bucket: str) -> str:
    """restic's S3 repository string for ``bucket`` at ``endpoint`` (with or without scheme)."""
    host = endpoint.removeprefix("https://").removeprefix("http://").rstrip("/")
    return f"s3:https://{host}/{bucket}"


def backup_target(
    config: StackConfig,
    access_key: pulumi.Output[str] | None,
    secret_key: pulumi.Output[str] | None,
    opts: pulumi.ResourceOptions | None = None,
) -> pulumi.Output[dict[str, str]]:
    """The backup fields of the cluster secrets, as one secret Output."""
    if config.backup_repository:
        if access_key is None or secret_key is None:
            raise ConfigError(
                "invalid stack config:\n  mailcluster:backupAccessKey: backupRepository is set, "
                "so backupAccessKey and backupSecretKey are required (as secrets: `pulumi config "
                "set --secret backupAccessKey ...`)"
            )
        repo = config.backup_repository
        pair = pulumi.Output.all(access_key, secret_key)
        return pulumi.Output.secret(pair.apply(lambda v: _fields(repo, v[0], v[1])))
    label = bucket_label(config)
    bucket = linode.ObjectStorageBucket(
        f"{config.dc}-backup",
        label=label,
        region=config.region,
        opts=pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(protect=True, retain_on_delete=True)
        ),
    )
    key = linode.ObjectStorageKey(
        f"{config.dc}-backup",
        label=f"{label}-restic",
        bucket_accesses=[
            linode.ObjectStorageKeyBucketAccessArgs(
                bucket_name=bucket.label, region=bucket.region, permissions="read_write"
            )
        ],
        opts=opts,
    )
    values = pulumi.Output.all(bucket.s3_endpoint, key.access_key, key.secret_key)
    return pulumi.Output.secret(
        values.apply(lambda v: _fields(repository(v[0], label), v[1], v[2]))
    )


def _fields(repo: str, access: str, secret: str) -> dict[str, str]:
    return {"backup_repository": repo, "backup_access_key": access, "backup_secret_key": secret}
