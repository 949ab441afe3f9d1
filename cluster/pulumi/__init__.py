"""The Pulumi applier: Linode resources, provisioning, and what a change to them does.

Every module that imports pulumi or a Pulumi provider lives here.

The pure core (``cluster.config``, ``cluster.topology``, ``cluster.plan``, ``cluster.services``,
``cluster.material``) never imports Pulumi, so the lab applies the very same plan without it;
``tests/unit/test_pulumi_boundary.py`` keeps it that way. Inside this package ``import pulumi``
is still the top-level Pulumi SDK (imports are absolute).
"""
