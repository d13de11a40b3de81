import dataclasses
import datetime
from pathlib import Path

from certrenew.cli.status import CertificateStatus, unhealthy
from certrenew.config import Settings

NOW = datetime.datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=datetime.timezone.utc)


def row(name="example", state="ok", serial="abc"):
    return CertificateStatus(name=name, domains=["example.com"], state=state, serial=serial, not_after=NOW,
                             days_left=1.0, next_renewal=NOW, last_error=None, failures=0)


def test_json_serial_has_whole_bytes_and_times_whole_seconds():
    document = row(serial="abc").to_json()
    assert document["serial"] == "0abc"
    assert document["not_after"] == document["next_renewal"] == "2026-05-01T12:00:00+00:00"
    assert row(serial="0abc").to_json()["serial"] == "0abc"
    assert row(serial=None, state="missing").to_json()["serial"] is None


def test_nothing_managed_is_not_healthy(tmp_path):
    missing = Settings.of(state_dir=tmp_path / "nowhere")
    assert unhealthy(missing, []) == f"no certificate is managed (no state dir {tmp_path / 'nowhere'}): " \
                                     "check --config and --state-dir"
    present = Settings.of(state_dir=tmp_path)
    assert unhealthy(present, [row(state="unmanaged")]).startswith("no certificate is managed: ")


def test_unhealthy_names_each_certificate_that_is_not_ok():
    settings = Settings.of(state_dir=Path("/unused"))
    assert unhealthy(settings, [row("a"), row("b", state="unmanaged")]) is None
    assert unhealthy(settings, [row("a", state="failing"), row("b"), row("c", state="due")]) == \
        "a is failing, c is due"



def test_a_revoked_certificate_is_not_healthy_and_due_since_its_revocation(tmp_path):
    from certrenew.cli.status import collect
    from certrenew.state.store import CertificateRecord, FileStore

    store = FileStore(tmp_path)
    with store.lock(5):
        store.save_record(CertificateRecord("a.example", ["a.example"], "ecdsa-p256", "1", NOW,
                                            NOW + datetime.timedelta(days=90), revoked=NOW))
    settings = Settings.of(state_dir=tmp_path)
    (row,) = collect(settings, None, store, now=NOW + datetime.timedelta(hours=1))
    assert (row.state, row.next_renewal) == ("revoked", NOW)
    assert unhealthy(settings, [row]) == "a.example is revoked"


def test_a_certificate_another_bundle_in_the_ssl_dir_shadows_is_shadowed_when_status_reads_the_ssl_dir(tmp_path):
    import trustme

    from certrenew.cli.status import collect
    from certrenew.config import CertificateSpec
    from certrenew.pki.bundle import build_bundle

    (tmp_path / "ssl").mkdir()
    leaf = trustme.CA().issue_cert("example.com")
    (tmp_path / "ssl" / "example.com.pem").write_bytes(
        build_bundle(b"".join(blob.bytes() for blob in leaf.cert_chain_pems), leaf.private_key_pem.bytes()))
    settings = Settings.of(state_dir=tmp_path / "state", ssl_dir=tmp_path / "ssl")
    specs = [CertificateSpec("main", ("example.com",)), CertificateSpec("other", ("other.example",))]
    assert [row.state for row in collect(settings, specs)] == ["missing", "missing"]  # the daemon's: state alone
    main, other = collect(settings, specs, read_ssl_dir=True)
    assert (main.state, other.state) == ("shadowed", "missing")
    assert main.last_result.startswith(f"refused: {tmp_path / 'ssl' / 'example.com.pem'} claims example.com too")
    assert unhealthy(settings, [main, other]) == "main is shadowed, other is missing"


def test_the_issuing_ca_is_in_the_json_as_its_url_and_in_the_table_as_its_host():
    from certrenew.cli.status import format_table

    fallback = dataclasses.replace(row(), ca="https://acme.example.net:14000/dir")
    assert fallback.to_json()["ca"] == "https://acme.example.net:14000/dir"
    header, line = format_table([fallback, row("never", "missing", None)]).splitlines()[:2]
    column = header.index(" CA ") + 1
    assert line[column:].startswith("acme.example.net:14000 ")
