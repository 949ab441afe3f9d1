"""mailnode: the cluster's own programs that run on the nodes.

Node logic (mailbox replication, bans, role changes, health, alerts) is typed Python here, not
bash in templates: the plan installs this package on every node
(``cluster/services/nodepkg.py``: ``/usr/local/lib/mailcluster/python/mailnode``), systemd runs
its programs (a service for a loop, a timer for a schedule), and the unit tests import the very
same modules on the developer's machine.

Rules for every module here:
- the standard library and Debian's ``python3-*`` packages only (a node has no PyPI), on the
  Python of Debian 13 (3.13) and of the development machine (3.11): nothing newer than 3.11;
- no import of ``cluster`` (the Pulumi program and the lab never reach a node): the values a
  module needs come from a configuration file the plan writes;
- a program's entry point is ``main(argv: list[str] | None = None) -> int``, so that
  ``nodepkg.entry_point`` can make it a command in ``/usr/local/sbin``.
"""
