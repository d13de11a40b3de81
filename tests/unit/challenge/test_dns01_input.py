"""DNS-01 input checks: server addresses, names, TSIG key files (the BIND side is in integration/test_dns01.py)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from certrenew.challenge import dns01
from certrenew.challenge.dns01 import Dns01Solver, challenge_record
from certrenew.challenge.dnshook import DnsHook
from certrenew.config.challenges import check_dns01_domain
from certrenew.config.dns import DnsServer, load_tsig_key, parse_dns_server
from certrenew.errors import CertrenewError, UsageError
from certrenew.system.limits import MAX_KEY_FILE
from tests.harness.unfit import COMPLAINTS, UNFIT, place

TSIG_KEYGEN_OUTPUT = """\
key "certrenew" {
\talgorithm hmac-sha512;
\tsecret "bJAPpmNoEggrfaj9NW8mUBJU1l1mH6/h6rD9uQN0vqpLy9yMaFxrLCx09nkkVWDieltul8a8/W1tRHyKrOKgdw==";
};
"""


@pytest.mark.parametrize("text, expected", [
    ("ns1.example.com", DnsServer("ns1.example.com", 53)),
    ("192.0.2.53:5353", DnsServer("192.0.2.53", 5353)),
    ("2001:db8::53", DnsServer("2001:db8::53", 53)),
    ("[2001:db8::53]:5353", DnsServer("2001:db8::53", 5353)),
    ("[::1]", DnsServer("::1", 53)),
])
def test_dns_server_is_host_and_optional_port(text, expected):
    assert parse_dns_server(text) == expected


def test_dns_server_prints_as_given_with_its_port():
    assert str(parse_dns_server("[::1]")) == "[::1]:53" and str(parse_dns_server("ns1.example.com")) == "ns1.example.com:53"


@pytest.mark.parametrize("text", ["", ":53", "ns1.example.com:", "ns1.example.com:0", "ns1.example.com:65536",
                                  "ns1.example.com:dns", "[::1", "[::1]53", "ns 1.example.com", "https://ns1/",
                                  "ns1.example.com:５３"])
def test_a_bad_dns_server_is_a_usage_error(text):
    with pytest.raises(UsageError, match=r"^invalid DNS server"):
        parse_dns_server(text)


def test_a_wildcard_and_its_base_name_share_the_record():
    assert challenge_record("*.example.com") == challenge_record("example.com") == "_acme-challenge.example.com"


@pytest.mark.parametrize("domain", ["*.example.com", "example.com", "deep.sub.example.com"])
def test_dns01_accepts_names_and_wildcards(domain):
    check_dns01_domain(domain)


@pytest.mark.parametrize("domain, complaint", [
    ("*.*.example.com", "whole first label"), ("foo.*.example.com", "whole first label"),
    ("*example.com", "whole first label"), ("exa mple.com", "white space"), ("192.0.2.1", "an IP address, which DNS-01 cannot"),
    ("2001:db8::1", "an IP address, which DNS-01 cannot"),
])
def test_dns01_refuses_what_no_ca_can_validate(domain, complaint):
    with pytest.raises(UsageError, match=complaint):
        check_dns01_domain(domain)


def test_a_tsig_keygen_file_is_read(tmp_path):
    path = tmp_path / "tsig.key"
    path.write_text(TSIG_KEYGEN_OUTPUT)
    path.chmod(0o600)
    key = load_tsig_key(path)
    assert (key.name, key.algorithm, len(key.secret)) == ("certrenew", "hmac-sha512", 64)
    assert "secret" not in repr(key)  # a log line or traceback never shows it


def test_a_missing_key_file_is_one_line(tmp_path):
    with pytest.raises(UsageError, match=r"^TSIG key file .*missing.key: cannot read it: No such file or directory$"):
        load_tsig_key(tmp_path / "missing.key")


@pytest.mark.parametrize("what", UNFIT)
def test_a_key_file_that_is_no_regular_file_or_too_large_is_one_line_unread(tmp_path, what):
    """A FIFO would block the start (or a SIGHUP) for ever, /dev/zero be read until memory runs out."""
    path = place(tmp_path / "tsig.key", what, MAX_KEY_FILE)
    with pytest.raises(UsageError, match=rf"^TSIG key file {re.escape(str(path))}: cannot read it: it is "
                                         rf"{re.escape(COMPLAINTS[what])}"):
        load_tsig_key(path)


@pytest.mark.parametrize("command", ["", "   ", "'unclosed"])
def test_a_bad_hook_command_is_a_usage_error(command):
    with pytest.raises(UsageError, match="DNS hook"):
        DnsHook(command)


RECORD = dns01.TxtRecord("a.example", "_acme-challenge.a.example", "a.example", "value")


def test_a_hook_that_writes_bytes_that_are_not_utf8_fails_in_its_own_words():
    hook = DnsHook("""sh -c 'printf "\\377 no API token\\n" >&2; exit 3' hook""")
    with pytest.raises(CertrenewError) as failure:
        hook.add(RECORD)
    assert str(failure.value) == ("DNS hook sh add _acme-challenge.a.example failed with exit status 3: "
                                  "\ufffd no API token")


def test_a_hook_is_done_when_it_exits_though_what_it_left_running_holds_its_output(tmp_path):
    """As ssh's ControlPersist does: a program in a session of its own keeps the hook's stdout open."""
    pid_file = tmp_path / "pid"
    hook = DnsHook(f"sh -c 'setsid sleep 40 & echo $! > {pid_file}; echo added' hook", timeout=2)
    started = time.monotonic()
    try:
        hook.add(RECORD)
        took = time.monotonic() - started
    finally:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert took < 20, f"waited {took:.0f} s for what the hook left running"


def test_checking_dns01_input_does_not_load_dnspython(tmp_path):
    """A run where nothing is due only checks its settings: dnspython must stay unloaded."""
    path = tmp_path / "tsig.key"
    path.write_text(TSIG_KEYGEN_OUTPUT)
    path.chmod(0o600)
    probe = ("import sys\n"
             "from certrenew.challenge import dns01, dnshook\nfrom certrenew.config import challenges, dns\n"
             f"dns.load_tsig_key({str(path)!r}); dns.parse_dns_server('ns1.example.com')\n"
             "dns01.Dns01Solver(dnshook.DnsHook('true')); challenges.check_domains('dns-01', ['*.example.com'])\n"
             "print(sorted(name for name in sys.modules if name == 'dns' or name.startswith('dns.')))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_dns_server_that_never_answers_is_named_once_in_one_sentence(monkeypatch):
    monkeypatch.setattr(dns01, "QUERY_TIMEOUT", 0.2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # takes the queries, answers none
        silent.bind(("127.0.0.1", 0))
        server = f"127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(CertrenewError) as raised:
            Dns01Solver(None, parse_dns_server(server)).prepare(["a.example"])
        assert silent.recv(512, socket.MSG_DONTWAIT)  # it was asked
    assert re.fullmatch(rf"DNS-01: cannot find the zone of _acme-challenge\.a\.example at {server}: "
                        r"no answer within \d+ s", str(raised.value)), raised.value


class Quiet:
    """A publisher that publishes nowhere: these tests are about the waiting."""

    def check(self, zone):
        pass

    def add(self, record):
        pass

    def remove(self, record):
        pass


def test_the_ns_look_ups_count_against_the_propagation_timeout():
    import dns.message
    import dns.rdatatype

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # takes the queries, answers none
        silent.bind(("127.0.0.1", 0))
        server = f"127.0.0.1:{silent.getsockname()[1]}"
        solver = Dns01Solver(Quiet(), parse_dns_server(server), zone="a.example", propagation_timeout=1.0)
        solver.present("a.example", "token", "value")
        started = time.monotonic()
        with pytest.raises(CertrenewError) as raised:
            solver.wait_ready()
        took = time.monotonic() - started
        first = dns.message.from_wire(silent.recv(512, socket.MSG_DONTWAIT))
    assert first.question[0].rdtype == dns.rdatatype.NS  # the NS look-up was asked, and never answered
    assert str(raised.value).startswith(f"DNS-01: _acme-challenge.a.example TXT not visible at {server} after 1 s")
    assert took < dns01.QUERY_TIMEOUT  # one look-up alone could take 2 x QUERY_TIMEOUT before
