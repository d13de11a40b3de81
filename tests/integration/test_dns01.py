"""The DNS-01 solver against a real BIND 9 (tests/harness/bind.py): RFC 2136 updates signed with TSIG,
the hook path driving nsupdate, and the propagation wait asking the zone's name servers."""

import base64
import logging
import re
import secrets
import threading
import time
from pathlib import Path

import pytest

from certrenew.challenge.dns01 import Dns01Solver, TxtRecord
from certrenew.challenge.dnshook import DnsHook
from certrenew.challenge.rfc2136 import Rfc2136Publisher
from certrenew.config.dns import load_tsig_key, parse_dns_server
from certrenew.errors import CertrenewError, Interrupted, UsageError
from certrenew.system.runcontext import RunContext
from tests.harness.bind import KEY_NAME, LAGGING_ZONE, ZONE

HOOK = Path(__file__).resolve().parents[1] / "harness" / "nsupdate-hook"
RECORD = f"_acme-challenge.{ZONE}"


def rfc2136_solver(bind, key_file=None, **options) -> Dns01Solver:
    server = parse_dns_server(bind.address)
    return Dns01Solver(Rfc2136Publisher(server, load_tsig_key(key_file or bind.key_file)), server, **options)


def hook_solver(bind, command: str, **options) -> Dns01Solver:
    return Dns01Solver(DnsHook(command), parse_dns_server(bind.address), **options)


def value() -> str:
    """A fresh TXT value shaped like a real one (base64url of a SHA-256)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def test_wildcard_and_base_name_share_one_record_and_cleanup_removes_only_ours(bind):
    solver = rfc2136_solver(bind)
    someone_elses = TxtRecord(ZONE, RECORD, ZONE, "not certrenew's")
    solver.publisher.add(someone_elses)
    wildcard, base = value(), value()
    solver.present(f"*.{ZONE}", "token-wild", wildcard)
    solver.present(ZONE, "token-base", base)
    assert bind.txt(RECORD) == {"not certrenew's", wildcard, base}  # added, never replaced

    started = time.monotonic()
    solver.wait_ready()
    assert time.monotonic() - started < 10  # BIND answers at once: no fixed wait

    solver.cleanup(f"*.{ZONE}", "token-wild")
    assert bind.txt(RECORD) == {"not certrenew's", base}
    solver.cleanup(ZONE, "token-base")
    solver.cleanup(ZONE, "token-base")  # already gone: no error
    assert bind.txt(RECORD) == {"not certrenew's"}
    solver.publisher.remove(someone_elses)
    assert bind.txt(RECORD) == set()


def test_the_zone_is_found_by_soa_for_a_deep_name_or_taken_as_given(bind):
    found, given = rfc2136_solver(bind), rfc2136_solver(bind, zone=f"{ZONE}.")
    for solver, domain in ((found, f"*.a.b.{ZONE}"), (given, f"c.{ZONE}")):
        validation = value()
        solver.present(domain, "token", validation)
        record = f"_acme-challenge.{domain.removeprefix('*.')}"
        assert bind.txt(record) == {validation}
        solver.wait_ready()
        solver.cleanup(domain, "token")
        assert bind.txt(record) == set()


def test_a_wrong_secret_fails_with_the_servers_answer(bind, tmp_path):
    wrong = tmp_path / "wrong.key"
    new_secret = base64.b64encode(secrets.token_bytes(32)).decode()
    wrong.write_text(re.sub(r'secret "[^"]*"', f'secret "{new_secret}"', bind.key_file.read_text()))
    wrong.chmod(0o600)
    assert load_tsig_key(wrong).secret != load_tsig_key(bind.key_file).secret
    solver = rfc2136_solver(bind, key_file=wrong)
    with pytest.raises(CertrenewError) as failure:
        solver.present(f"wrong-secret.{ZONE}", "token", value())
    message = str(failure.value)
    assert bind.address in message and "BADSIG" in message, message
    assert "\n" not in message
    assert bind.txt(f"_acme-challenge.wrong-secret.{ZONE}") == set()


def test_a_key_the_server_does_not_know_fails_with_its_answer(bind, tmp_path):
    unknown = tmp_path / "unknown.key"
    unknown.write_text(bind.key_file.read_text().replace(f'"{KEY_NAME}"', '"nobody"'))
    unknown.chmod(0o600)
    with pytest.raises(CertrenewError, match=rf"{bind.address}.*BADKEY"):
        rfc2136_solver(bind, key_file=unknown).present(f"unknown-key.{ZONE}", "token", value())


def test_a_zone_the_key_may_not_update_is_refused_by_the_server(bind):
    solver = rfc2136_solver(bind, zone="not-served.test")
    with pytest.raises(CertrenewError, match=rf"{bind.address} refused .*: it answered NOTAUTH"):
        solver.present("www.not-served.test", "token", value())


@pytest.mark.parametrize("mutate, complaint", [
    (lambda text: text.replace("hmac-sha256", "hmac-md5"), "unknown algorithm 'hmac-md5'"),
    (lambda text: text.replace("hmac-sha256", "hmac-sha999"), "unknown algorithm 'hmac-sha999'"),
    (lambda text: text.replace("};", "}"), "expected one key"),
    (lambda text: text + text, "expected one key"),
    (lambda text: text.replace('secret "', 'secret "!'), "not base64"),
])
def test_a_bad_key_file_is_refused(bind, tmp_path, mutate, complaint):
    bad = tmp_path / "bad.key"
    bad.write_text(mutate(bind.key_file.read_text()))
    bad.chmod(0o600)
    with pytest.raises(UsageError, match=complaint):
        load_tsig_key(bad)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_key_file_others_can_read_is_refused(bind, tmp_path, mode):
    shared = tmp_path / "shared.key"
    shared.write_text(bind.key_file.read_text())
    shared.chmod(mode)
    with pytest.raises(UsageError, match=f"readable by others \\(mode {mode:04o}\\)"):
        load_tsig_key(shared)
    shared.chmod(0o600)
    assert load_tsig_key(shared).name == KEY_NAME  # the same content, kept private, is accepted


def test_the_hook_path_publishes_through_nsupdate(bind):
    solver = hook_solver(bind, f"{HOOK} 127.0.0.1 {bind.port} {bind.key_file}")
    wildcard, base = value(), value()
    solver.present(f"*.hook.{ZONE}", "token-wild", wildcard)
    solver.present(f"hook.{ZONE}", "token-base", base)
    record = f"_acme-challenge.hook.{ZONE}"
    assert bind.txt(record) == {wildcard, base}
    solver.wait_ready()
    solver.cleanup(f"*.hook.{ZONE}", "token-wild")
    assert bind.txt(record) == {base}
    solver.cleanup(f"hook.{ZONE}", "token-base")
    assert bind.txt(record) == set()


def test_a_failing_hook_is_one_line_and_a_failing_cleanup_only_a_warning(bind, caplog):
    solver = hook_solver(bind, "sh -c 'echo first; echo no API token for $CERTRENEW_DOMAIN >&2; exit 4' hook")
    with pytest.raises(CertrenewError) as failure:
        solver.present(f"*.fail.{ZONE}", "token", value())
    assert str(failure.value) == (f"DNS hook sh add _acme-challenge.fail.{ZONE} failed with exit status 4: "
                                  f"no API token for *.fail.{ZONE}")
    with pytest.raises(CertrenewError, match="DNS hook not found: '/nonexistent/hook'"):
        hook_solver(bind, "/nonexistent/hook").present(f"x.{ZONE}", "token", value())

    # present() succeeded (the record is there) but remove fails: logged, not raised.
    remover_fails = hook_solver(bind, f"""sh -c 'test "$4" = add && exec "$0" "$@"' """
                                      f"{HOOK} 127.0.0.1 {bind.port} {bind.key_file}")
    with caplog.at_level(logging.WARNING, logger="certrenew.challenge.dns01"):
        stale = value()
        remover_fails.present(f"stale.{ZONE}", "token", stale)
        remover_fails.cleanup(f"stale.{ZONE}", "token")
    assert f"could not remove _acme-challenge.stale.{ZONE}" in caplog.text
    assert bind.txt(f"_acme-challenge.stale.{ZONE}") == {stale}  # the fault really happened


def test_a_hook_that_hangs_is_stopped_at_its_timeout(bind):
    # The shell waits for its child: killing only the shell would leave sleep holding the output pipe.
    solver = Dns01Solver(DnsHook("sh -c 'sleep 30; true' hook", timeout=0.5), parse_dns_server(bind.address))
    started = time.monotonic()
    with pytest.raises(CertrenewError, match=f"DNS hook sh add _acme-challenge.slow.{ZONE} did not finish within 0.5 s"):
        solver.present(f"slow.{ZONE}", "token", value())
    assert time.monotonic() - started < 10


def test_wait_ready_times_out_naming_the_server_and_the_record(bind):
    solver = hook_solver(bind, "true", propagation_timeout=1.5)  # a hook that publishes nothing
    validation = value()
    solver.present(f"never.{ZONE}", "token", validation)
    started = time.monotonic()
    with pytest.raises(CertrenewError) as failure:
        solver.wait_ready()
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 15
    # BIND's wildcard A record makes the name exist: it answers NOERROR with no TXT.
    assert str(failure.value) == (f"DNS-01: _acme-challenge.never.{ZONE} TXT not visible at {bind.address} "
                                  f"after 1.5 s (missing value {validation!r})")


def test_wait_ready_checks_every_name_server_of_the_zone(bind, caplog):
    """lagging.test: ns1 is this BIND, ns2 (127.0.0.2) never has the record, a third NS does not resolve."""
    solver = rfc2136_solver(bind, propagation_timeout=1.5)
    validation = value()
    solver.present(f"*.{LAGGING_ZONE}", "token", validation)
    assert bind.txt(f"_acme-challenge.{LAGGING_ZONE}") == {validation}  # the primary has it
    with caplog.at_level(logging.WARNING, logger="certrenew.challenge.dns01"):
        with pytest.raises(CertrenewError, match=f"_acme-challenge.{LAGGING_ZONE} TXT not visible at 127.0.0.2:53 "):
            solver.wait_ready()
    assert "NS ns.unresolvable.invalid. of lagging.test does not resolve" in caplog.text
    solver.cleanup(f"*.{LAGGING_ZONE}", "token")
    assert bind.txt(f"_acme-challenge.{LAGGING_ZONE}") == set()


def test_concurrent_orders_each_wait_for_their_own_records(bind):
    solver = rfc2136_solver(bind)
    never = hook_solver(bind, "true", propagation_timeout=60)
    errors = []

    def order(index: int) -> None:
        try:
            domain = f"site{index}.{ZONE}"
            values = {f"*.{domain}": value(), domain: value()}
            for name, validation in values.items():
                solver.present(name, f"token-{name}", validation)
            never.wait_ready()  # this thread presented nothing to `never`: nothing to wait for
            solver.wait_ready()
            assert bind.txt(f"_acme-challenge.{domain}") == set(values.values())
            for name in values:
                solver.cleanup(name, f"token-{name}")
            assert bind.txt(f"_acme-challenge.{domain}") == set()
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    never.present(f"elsewhere.{ZONE}", "token", value())  # pending for the main thread only
    threads = [threading.Thread(target=order, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)


def test_a_signal_ends_wait_ready_at_once(bind):
    context = RunContext()
    solver = hook_solver(bind, "true", propagation_timeout=120, context=context)
    solver.present(f"interrupted.{ZONE}", "token", value())
    timer = threading.Timer(1.0, context.cancel)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(Interrupted):
            solver.wait_ready()
    finally:
        timer.cancel()
    assert time.monotonic() - started < 15


@pytest.mark.haproxy
def test_pebble_resolves_through_bind(bind, tmp_path):
    """A Lab pointed at BIND: pebble finds www.example.test by BIND's wildcard, and nothing BIND does not serve."""
    from tests.harness.lab import Lab

    with Lab(tmp_path / "lab", dns_server=bind.address) as lab:
        served = lab.certrenew(f"www.{ZONE}")
        assert served.returncode == 0, served.stderr
        unknown = lab.certrenew("www.example.org")  # challtestsrv would say 127.0.0.1; BIND refuses
        assert unknown.returncode == 1
        assert "could not resolve" in unknown.stderr and "www.example.org" in unknown.stderr
    assert not (lab.ssl_dir / "www.example.org.pem").exists()
    assert (lab.ssl_dir / f"www.{ZONE}.pem").exists()
