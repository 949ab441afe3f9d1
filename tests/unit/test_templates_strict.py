"""Templates render with StrictUndefined: a variable the caller forgot is an error, never an empty
string in a daemon's config."""

from __future__ import annotations

import jinja2
import pytest

from cluster.render import render


def test_missing_variable_fails() -> None:
    with pytest.raises(jinja2.UndefinedError, match="milter_bind"):
        render("/etc/rspamd/local.d/worker-proxy.inc")


def test_all_values_given_renders() -> None:
    text = render("/etc/rspamd/local.d/worker-proxy.inc", milter_bind="127.0.0.1:11332")
    assert text.startswith("# managed by mailcluster; edits are overwritten\n")
    assert 'bind_socket = "127.0.0.1:11332";' in text


def test_missing_key_of_a_mapping_fails() -> None:
    # The query is left out: the map file must not render with an empty "query =".
    with pytest.raises(jinja2.UndefinedError, match="query"):
        render(
            "/etc/postfix/mysql-map.cf",
            description="x",
            db_user="u",
            db_password="p",
            db_name="d",
        )
