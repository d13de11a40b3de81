"""What a batch costs, counted rather than timed, against a real pebble and HAProxy: the
probe round trips, the requests to the CA and the HAProxy commands per certificate, and
that every probe is done before the first order (inside the orders, each probe waited
on the GIL behind the busy workers: 0.1 s a certificate, five times the batch's time).
A count does not move with the machine's load; a regression of any of them fails here.
Nor does the list of modules a run imports: what an HTTP-01 batch does not use is not imported."""

import collections

import pytest

from tests.harness.faultproxy import FaultProxy
from tests.harness.lab import LOOPBACK
from tests.harness.relay import Relay

pytestmark = pytest.mark.pebble_env({"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
                                     "PEBBLE_AUTHZREUSE": "0"})
CERTIFICATES = 6
NOT_FOR_HTTP_01 = {"certrenew.challenge.dns01", "certrenew.challenge.rfc2136", "certrenew.challenge.dnshook",
                   "certrenew.challenge.tlsalpn01", "certrenew.challenge.caa", "certrenew.cli.metrics", "dns"}
"""Modules (and dnspython) an HTTP-01 run has no use for: DNS-01's publishers, TLS-ALPN-01, CAA, metrics."""


def test_a_batch_probes_each_name_once_before_any_order_and_counts_its_requests(lab, tmp_path):
    names = [f"c{index}.batch.example" for index in range(CERTIFICATES)]
    config = tmp_path / "certrenew.toml"
    config.write_text("".join(f'[[certificate]]\ndomains = ["{name}"]\n\n' for name in names))
    with FaultProxy(lab) as proxy, \
            Relay("probe", (LOOPBACK, lab.http_port), seen=proxy.seen) as probes, \
            Relay("haproxy", str(lab.admin_socket), tmp_path / "admin.sock", seen=proxy.seen) as commands:
        result = lab.certrenew("run", "--config", str(config), env={
            **proxy.env, "CERTRENEW_SELF_CHECK_ADDRESS": f"{LOOPBACK}:{probes.address[1]}",
            "CERTRENEW_HAPROXY_SOCKET": str(tmp_path / "admin.sock"), "CERTRENEW_CONCURRENCY": "2",
            "PYTHONPROFILEIMPORTTIME": "1"})
        assert result.returncode == 0, result.stderr
    imported = imports(result.stderr)
    assert "certrenew.renewal.issue" in imported and not imported & NOT_FOR_HTTP_01, sorted(imported & NOT_FOR_HTTP_01)
    assert not guessers(imported), guessers(imported)
    steps = [step for _, step in proxy.seen]
    # One probe round trip per name, every one before the CA hears of any order.
    assert len(probes.lines()) == CERTIFICATES
    assert max(steps.index(line) for line in probes.lines()) < steps.index("new-order"), steps
    # Per certificate: one order, one challenge answered, one finalize, one download; the account is
    # looked up once, and each of the two workers logs in once (directory, a first nonce). Only the
    # polls (authorization, order) depend on how fast pebble validates, so they are not counted; nor is
    # a finalize sent at the first look that pebble refused as not validated yet (`finalized`).
    requests = collections.Counter(step for method, step in proxy.seen if method in ("GET", "HEAD", "POST"))
    requests["finalize"] = proxy.finalized()
    assert {step: requests[step] for step in ("new-order", "challenge", "finalize", "certificate")} == \
        dict.fromkeys(("new-order", "challenge", "finalize", "certificate"), CERTIFICATES), requests
    assert (requests["account"], requests["directory"], requests["nonce"]) == (1, 2, 2), requests
    # HAProxy: four commands per new certificate (new, set, commit, add to the crt directory), and four
    # for the batch (the pre-flight's level and crt-list, the install's crt-list and certificate table).
    verbs = collections.Counter(" ".join(line.split()[:3]) for line in commands.lines())
    assert verbs == {"new ssl cert": CERTIFICATES, "set ssl cert": CERTIFICATES, "commit ssl cert": CERTIFICATES,
                     "add ssl crt-list": CERTIFICATES, "show cli level": 1, "show ssl crt-list": 2,
                     "show ssl cert": 1}, verbs
    for name in names:
        lab.served_certificate(name)


def test_one_certificate_by_name_loads_no_toml_parser_no_charset_guesser_and_no_difflib(lab):
    """`certrenew NAME` with no config file: what it does not use is not imported (each costs its start-up)."""
    result = lab.certrenew("one.batch.example", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr
    imported = imports(result.stderr)
    assert "certrenew.renewal.issue" in imported and not imported & {"tomli", "difflib"}, sorted(imported)
    assert not guessers(imported), guessers(imported)
    lab.served_certificate("one.batch.example")


def imports(stderr: str) -> set[str]:
    """The modules `-X importtime` lists: each one imported, or tried."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def guessers(imported: set[str]) -> list[str]:
    """The modules of requests' charset guessers that were loaded. The CLI refuses their import, which
    `-X importtime` still lists as tried, so what is looked for is what the package loads with it."""
    return sorted(name for name in imported if name.startswith(("charset_normalizer.", "chardet.")))
