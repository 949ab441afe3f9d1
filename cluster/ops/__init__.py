"""The operator CLI: ``python -m cluster.ops --lab|--stack NAME COMMAND``."""
