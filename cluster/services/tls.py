"""TLS: the certificate every daemon presents, and the cluster CA.

Files, all under ``/etc/mailcluster/tls`` so Postfix, Dovecot and Apache name one place:

- ``ca.pem``: the cluster CA (dsync clients verify peers with it).
- ``cluster-fullchain.pem`` / ``cluster-privkey.pem``: this data centre's certificate from the
  cluster CA (``ClusterSecrets.tls[dc]``), one for both nodes of a DC. Dovecot's doveadm
  (replication) listener always presents it, whatever ``tlsMode`` says.
- ``fullchain.pem`` / ``privkey.pem``: what users see (SMTP, IMAP, HTTPS). In ``selfsigned`` mode
  the same certificate as above. In ``letsencrypt`` mode a certbot lineage copied here by the
  deploy hook; until certbot first succeeds they start as a copy of the cluster certificate, so
  daemons can start.

Let's Encrypt (``tlsMode: letsencrypt``): HTTP-01 with ``certbot certonly --webroot`` on
``ACME_WEBROOT``, which Apache serves at ``/.well-known/acme-challenge/`` on port 80 of the shared
IP. Only the node that holds the active data centre's shared IP (where mail.<domain> points) asks
for the certificate; Debian's certbot.timer renews it there. The deploy hook copies the new
pair into this directory and reloads the daemons; the sync service copies the pair from the
active node to the other three. This cannot be tested on a machine without internet: the lab
forces ``selfsigned``.

Private keys are 0640 root:ssl-cert: Postfix, Dovecot and Apache read them as root before they
drop privileges, and nothing else may.
"""

from __future__ import annotations

import shlex

from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, Step, file_step_name, script_step
from cluster.topology import Topology

PACKAGES: tuple[str, ...] = ("ssl-cert", "openssl", "certbot")

TLS_DIR = "/etc/mailcluster/tls"
CA = f"{TLS_DIR}/ca.pem"
CHAIN = f"{TLS_DIR}/fullchain.pem"
KEY = f"{TLS_DIR}/privkey.pem"
CLUSTER_CHAIN = f"{TLS_DIR}/cluster-fullchain.pem"
CLUSTER_KEY = f"{TLS_DIR}/cluster-privkey.pem"
KEY_GROUP = "ssl-cert"
ACME_WEBROOT = "/var/www/letsencrypt"
DEPLOY_HOOK = "/etc/letsencrypt/renewal-hooks/deploy/mailcluster"
CERTBOT_NAME = "mailcluster"
LINEAGE = f"/etc/letsencrypt/live/{CERTBOT_NAME}"
BOOTSTRAP_STEP = "tls.bootstrap"

# Mozilla "intermediate" (guideline 5.7): TLS 1.2 with AEAD ciphers and forward secrecy; TLS 1.3
# suites are OpenSSL's defaults. https://ssl-config.mozilla.org/guidelines/5.7.json
MOZILLA_INTERMEDIATE_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)


def public_names(ctx: HostContext) -> list[str]:
    """The names users reach the active data centre by (the Let's Encrypt certificate's SANs)."""
    return public_names_of(ctx.topology)


def public_names_of(topology: Topology) -> list[str]:
    d = topology.domain
    return [
        topology.mail_host,
        f"webmail.{d}",
        f"mta-sts.{d}",
        f"autoconfig.{d}",
        f"autodiscover.{d}",
        d,  # Outlook's and Thunderbird's lookups on the domain itself (autoconfig.py)
    ]


def public_pair_steps(ctx: HostContext) -> tuple[str, ...]:
    """Steps that install the pair users see: a daemon's reload watches them."""
    if ctx.config.tls_mode == "selfsigned":
        return (file_step_name(CHAIN), file_step_name(KEY))
    return (BOOTSTRAP_STEP,)


def cluster_pair_steps() -> tuple[str, ...]:
    """Steps that install the cluster CA and this data centre's cluster pair."""
    return (file_step_name(CA), file_step_name(CLUSTER_CHAIN), file_step_name(CLUSTER_KEY))


def steps(ctx: HostContext) -> list[Step]:
    pair = ctx.secrets.tls[ctx.node.dc]
    cluster_chain = ctx.literal_file(CLUSTER_CHAIN, pair.cert_pem)
    cluster_key = _key_file(ctx, CLUSTER_KEY, pair.key_pem)
    out = [ctx.literal_file(CA, ctx.secrets.ca_cert_pem), cluster_chain, cluster_key]
    if ctx.config.tls_mode == "selfsigned":
        out += [
            ctx.literal_file(CHAIN, pair.cert_pem),
            _key_file(ctx, KEY, pair.key_pem),
        ]
        return out
    deploy_hook = ctx.file(DEPLOY_HOOK, mode="0755", tls_dir=TLS_DIR, chain=CHAIN, key=KEY,
                           key_group=KEY_GROUP)  # fmt: skip
    out += [
        script_step(
            BOOTSTRAP_STEP,
            f"""# Until certbot has a certificate, present the cluster one so daemons can start.
for pair in {CLUSTER_CHAIN}:{CHAIN} {CLUSTER_KEY}:{KEY}; do
  src=${{pair%%:*}} dst=${{pair#*:}}
  if [ ! -s "$dst" ]; then
    install -m "$(stat -c %a "$src")" -o root -g "$(stat -c %G "$src")" "$src" "$dst"
    echo "{CHANGED_MARK} $dst (bootstrap copy of the cluster certificate)"
  fi
done
""",
            after=(cluster_chain, cluster_key),
        ),
        deploy_hook,
        script_step("tls.certbot", _certbot_script(ctx), after=(BOOTSTRAP_STEP,),
                    watch=(deploy_hook,)),
    ]  # fmt: skip
    return out


def _key_file(ctx: HostContext, path: str, pem: str) -> Step:
    return ctx.literal_file(path, pem, mode="0640", owner="root", group=KEY_GROUP, secret=True)


def _certbot_script(ctx: HostContext) -> str:
    vip = ctx.topology.shared_ip(ctx.node.dc)
    email = ctx.config.letsencrypt_email or ""
    names = public_names(ctx)
    domains = " ".join(f"-d {shlex.quote(n)}" for n in names)
    if ctx.node.dc != ctx.topology.active_dc:
        return "# standby data centre: the active one obtains the certificate; sync copies it\n"
    return f"""install -d -m 0755 {ACME_WEBROOT}
# Only the holder of the shared IP can answer the HTTP-01 challenge for mail.<domain>.
if ! ip -o -4 addr show | grep -qF " {vip}/"; then
  exit 0
fi
lineage={LINEAGE}
if [ -e "$lineage/cert.pem" ]; then
  # Renewals are Debian's certbot.timer's (same hook). Only a name added to the plan since the
  # lineage was issued (autodiscover.<domain>) asks again, with --expand.
  have=" $(openssl x509 -in "$lineage/cert.pem" -noout -ext subjectAltName \\
    | {{ grep -o 'DNS:[^,]*' || true; }} | cut -d: -f2 | tr '\\n' ' ')"
  missing=""
  for name in {" ".join(shlex.quote(n) for n in names)}; do
    case "$have" in *" $name "*) ;; *) missing="$missing $name" ;; esac
  done
  [ -n "$missing" ] || exit 0
  echo "certificate {CERTBOT_NAME} lacks$missing: expanding it" >&2
fi
certbot certonly --non-interactive --agree-tos -m {shlex.quote(email)} \\
  --cert-name {CERTBOT_NAME} --webroot -w {ACME_WEBROOT} {domains} \\
  --expand --deploy-hook {DEPLOY_HOOK}
echo "{CHANGED_MARK} obtained Let's Encrypt certificate {CERTBOT_NAME} for {" ".join(names)}"
"""
