"""`--store etcd://...` parsed, or refused in one line naming the form (no etcd needed)."""

import pytest

from certrenew.errors import UsageError
from certrenew.state.etcd import from_url


def test_a_url_names_the_endpoints_and_the_prefix():
    backend = from_url("etcd://127.0.0.1:2379,etcd-2.example:2379,[::1]:2379/fleet/one/")
    assert backend.prefix == "fleet/one"
    assert backend.where("a/b") == "etcd://127.0.0.1:2379,etcd-2.example:2379,[::1]:2379/fleet/one/data/a/b"


@pytest.mark.parametrize("url", ["etcd://", "etcd://127.0.0.1:2379", "etcd://127.0.0.1:2379/",
                                 "etcd://127.0.0.1/p", "http://127.0.0.1:2379/p", "etcd://a:1,/p"])
def test_a_malformed_url_is_refused_naming_the_form(url):
    with pytest.raises(UsageError, match=r"the form is etcd://HOST:PORT\[,HOST:PORT...\]/PREFIX"):
        from_url(url)
