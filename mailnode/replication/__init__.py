"""Mailbox replication of our own, on Dovecot 2.4 (which has no replicator): the controller.

Every node runs it (``mailcluster-replication run``, the systemd service
``mailcluster-replication``). It learns of every committed mailbox change from Dovecot's event
exporter (``push_notification_finished``, posted to it on loopback), queues the user for each
node it pushes to, and runs one ``doveadm sync`` per user and target inside the WireGuard
mesh. Who pushes to whom follows the role: the writer (the holder of the active data centre's
shared IP) pushes to its DC peer and to both nodes of the other data centre; the active data
centre's other node pushes its own changes (its Postfix queue delivered after a crash) to its
peer; the standby data centre pushes nothing and creates nothing.

Modules: ``settings`` (the JSON configuration), ``store`` (the queue on disk), ``controller``
(what to sync next, and the figures), ``duties`` (role checks, catch-ups, sweeps), ``dsync``
(running doveadm), ``maildirs`` (recent changes read from the files), ``service`` (threads and
the HTTP endpoint), ``health`` (checks for mailcluster-health), ``cli`` (the command).
"""
