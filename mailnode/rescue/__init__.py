"""mailcluster-rescue: a lost node's acknowledged mail, taken from its volume onto its DC peer.

A node that crashed for good may hold mail that it acknowledged and its peer never got: messages
delivered in the moment before their replication, and its Postfix queue. Both are on its volume.
The operator attaches that volume to the peer (``python -m cluster.ops rescue``: Linode's API or
the lab), and this program, on the peer, mounts it (``volume``), merges every maildir into the
live mailboxes (``mailboxes``), hands the queue to the live Postfix (``queue``) and unmounts it.
Its configuration is /etc/mailcluster/rescue.json (``settings``), written by the plan.
"""
