"""The lab: the whole two-data-centre cluster on one machine, in network namespaces."""
