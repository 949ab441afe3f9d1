"""The Pulumi side: Linode resources, provisioning, and what a change to them does."""
