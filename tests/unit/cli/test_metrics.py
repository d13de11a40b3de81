"""Metrics and health: what a scraper and a health check read, built from status rows."""

import datetime
import os
import socket
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from certrenew.cli import metrics
from certrenew.cli.status import CertificateStatus
from certrenew.config import Settings, build_settings
from certrenew.errors import CertrenewError, UsageError
from certrenew.system import httpd
from tests.harness.lab import closed_by_peer

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)


def row(name, state="ok", serial="0a", days=60, failures=0):
    not_after = NOW + datetime.timedelta(days=days) if serial else None
    return CertificateStatus(
        name=name, domains=[name], state=state, serial=serial, not_after=not_after,
        days_left=days if serial else None,
        next_renewal=NOW + datetime.timedelta(days=days - 30) if serial else None,
        last_error="boom" if failures else None, failures=failures)


def samples(text: bytes) -> dict:
    """{(sample name, frozen labels): value} of a rendered exposition."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text.decode())
            for sample in family.samples}


def per_name(found: dict, metric: str) -> dict:
    return {dict(labels)["name"]: value for (name, labels), value in found.items() if name == metric}


def test_render_parses_back_with_the_values_of_the_rows():
    rows = [row("alpha"), row("beta", "failing", failures=3), row("gamma", "missing", serial=None),
            row("old", "unmanaged")]
    telemetry = metrics.Telemetry()
    for failed in (False, False, True):
        telemetry.count_acme_request(failed)
    telemetry.record_run(False, 1.5)
    found = samples(metrics.render(rows, telemetry))

    alpha_expiry = (NOW + datetime.timedelta(days=60)).timestamp()
    assert per_name(found, "certrenew_certificate_expiration_timestamp_seconds") == {
        "alpha": alpha_expiry, "beta": alpha_expiry}  # none for the never-issued gamma, none for unmanaged
    assert per_name(found, "certrenew_certificate_renewal_timestamp_seconds")["alpha"] == (
        NOW + datetime.timedelta(days=30)).timestamp()
    assert per_name(found, "certrenew_certificate_ready") == {"alpha": 1, "beta": 0, "gamma": 0}
    assert per_name(found, "certrenew_certificate_failures") == {"alpha": 0, "beta": 3, "gamma": 0}
    assert {dict(labels)["name"]: dict(labels)["state"] for (name, labels), _ in found.items()
            if name == "certrenew_certificate_state"} == {"alpha": "ok", "beta": "failing", "gamma": "missing"}
    assert found[("certrenew_acme_requests_total", ())] == 3
    assert found[("certrenew_acme_errors_total", ())] == 1
    assert found[("certrenew_last_run_success", ())] == 0
    assert found[("certrenew_run_duration_seconds", ())] == 1.5
    assert abs(found[("certrenew_last_run_timestamp_seconds", ())] - telemetry.last_run) < 1e-3


def test_no_run_facts_before_a_run_has_ended():
    found = samples(metrics.render([row("alpha")], metrics.Telemetry()))
    assert found[("certrenew_acme_requests_total", ())] == 0
    assert not [name for name, _ in found if name.startswith("certrenew_last_run")]
    assert not [name for name, _ in samples(metrics.render([row("alpha")])) if name.startswith("certrenew_acme")]


def test_no_stale_series_after_removal_or_renewal():
    before = samples(metrics.render([row("alpha", serial="0a"), row("beta")]))
    assert set(per_name(before, "certrenew_certificate_ready")) == {"alpha", "beta"}

    # beta removed from the config (now unmanaged), alpha renewed (new serial, new expiry).
    after = samples(metrics.render([row("alpha", serial="0b", days=90), row("beta", "unmanaged")]))
    for metric in ("certrenew_certificate_expiration_timestamp_seconds", "certrenew_certificate_ready",
                   "certrenew_certificate_state", "certrenew_certificate_failures"):
        assert [dict(labels)["name"] for name, labels in after if name == metric] == ["alpha"], metric
    assert per_name(after, "certrenew_certificate_expiration_timestamp_seconds") == {
        "alpha": (NOW + datetime.timedelta(days=90)).timestamp()}
    assert not [labels for _, labels in after if "serial" in dict(labels)]


def test_health_document():
    assert metrics.health([row("alpha"), row("old", "unmanaged")]) == (
        True, {"healthy": True, "certificates": 1, "unhealthy": []})
    assert metrics.health([row("alpha"), row("beta", "expired"), row("gamma", "due")]) == (
        False, {"healthy": False, "certificates": 3, "unhealthy": ["beta", "gamma"]})
    # Nothing managed is not healthy, as in `certrenew status`.
    assert metrics.health([]) == (False, {"healthy": False, "certificates": 0, "unhealthy": []})
    assert metrics.health([row("old", "unmanaged")])[0] is False


def test_a_daemon_whose_passes_keep_failing_is_not_healthy():
    daemon = metrics.Telemetry(pass_errors=0)
    for _ in range(metrics.MAX_FAILING_PASSES - 1):
        daemon.record_pass(failed=True)
    assert metrics.health([row("alpha")], daemon) == (
        True, {"healthy": True, "certificates": 1, "unhealthy": [], "failing_passes": 2})
    daemon.record_pass(failed=True)  # the certificates are fine, but nothing renews them
    assert metrics.health([row("alpha")], daemon)[1] == {"healthy": False, "certificates": 1, "unhealthy": [],
                                                         "failing_passes": 3}
    daemon.record_pass(failed=False)
    assert metrics.health([row("alpha")], daemon)[0] and daemon.pass_errors == 3
    assert "failing_passes" not in metrics.health([row("alpha")], metrics.Telemetry())[1]  # a run's: no passes


def test_telemetry_counts_from_many_threads():
    telemetry = metrics.Telemetry()
    threads = [threading.Thread(target=lambda: [telemetry.count_acme_request(i % 2 == 0) for i in range(1000)])
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (telemetry.acme_requests, telemetry.acme_errors) == (8000, 4000)


def test_write_textfile_is_readable_by_node_exporter(tmp_path):
    path = tmp_path / "certrenew.prom"
    metrics.write_textfile(path, [row("alpha")])
    assert path.stat().st_mode & 0o777 == 0o644 & ~_umask()
    assert per_name(samples(path.read_bytes()), "certrenew_certificate_ready") == {"alpha": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["certrenew.prom"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_server_answers_metrics_and_health_then_frees_the_port():
    rows = [row("alpha")]
    telemetry = metrics.Telemetry()
    telemetry.count_acme_request(False)
    port = _port()
    with metrics.serve(f"127.0.0.1:{port}", lambda: rows, telemetry) as server:
        assert server.address == ("127.0.0.1", port)
        base = f"http://127.0.0.1:{port}"
        scraped = requests.get(f"{base}/metrics", timeout=5)
        assert scraped.status_code == 200
        assert scraped.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        found = samples(scraped.content)
        assert per_name(found, "certrenew_certificate_ready") == {"alpha": 1}
        assert found[("certrenew_acme_requests_total", ())] == 1

        answer = requests.get(f"{base}/healthz", timeout=5)
        assert (answer.status_code, answer.json()) == (200, {"healthy": True, "certificates": 1, "unhealthy": []})
        rows.append(row("beta", "expired"))  # the source is read at every request
        answer = requests.get(f"{base}/healthz", timeout=5)
        assert answer.status_code == 503 and answer.json()["unhealthy"] == ["beta"]
        assert answer.headers["Content-Type"] == "application/json"

        for path in ("/", "/metricsx", "/healthz/x"):
            assert requests.get(base + path, timeout=5).status_code == 404
    with pytest.raises(requests.ConnectionError):  # nothing listens any more
        requests.get(f"{base}/metrics", timeout=5)
    with metrics.serve(f"127.0.0.1:{port}", lambda: rows):  # and the port can be bound again at once
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 503


def test_server_reports_a_failing_source_and_keeps_serving():
    def broken():
        raise CertrenewError("state dir unreadable")

    with metrics.serve(f"127.0.0.1:{_port()}", broken) as server:
        base = "http://%s:%d" % server.address
        answer = requests.get(f"{base}/healthz", timeout=5)
        assert answer.status_code == 500 and "state dir unreadable" in answer.text
        assert requests.get(f"{base}/nothing", timeout=5).status_code == 404


def test_idle_clients_take_no_thread_and_health_is_answered_while_they_wait(open_files):
    """More idle clients than the old server had threads (16), and more than the cap (the oldest are
    closed): /healthz is answered while the newest of them are still connected, on no thread of theirs."""
    with metrics.serve(f"127.0.0.1:{_port()}", lambda: [row("alpha")]) as server:
        before = threading.active_count()
        idle = [socket.create_connection(server.address, timeout=5) for _ in range(httpd.MAX_CONNECTIONS + 40)]
        try:
            for client in idle:
                client.sendall(b"G")  # and never the rest of the request
            answer = requests.get("http://%s:%d/healthz" % server.address, timeout=5)
            assert answer.status_code == 200
            assert threading.active_count() - before <= 2  # the health check's worker, at most one more
            newest = idle[-40:]
            assert not any(closed_by_peer(client) for client in newest), "still waiting: the flood was on"
            assert sum(closed_by_peer(client) for client in idle[:40]) == 40, "the oldest were closed to make room"
        finally:
            for client in idle:
                client.close()


def test_a_huge_request_head_is_refused_after_a_few_kib():
    """99 headers of 65 KB (what took the stdlib server to 600 MB in 16 requests): 431, connection closed."""
    with metrics.serve(f"127.0.0.1:{_port()}", lambda: [row("alpha")]) as server:
        with socket.create_connection(server.address, timeout=5) as client:
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            sent = 0
            try:
                for index in range(99):
                    client.sendall(b"X-%d: " % index + b"a" * 65000 + b"\r\n")
                    sent += 65000
            except OSError:  # reset: the server stopped reading
                pass
            assert sent > httpd.MAX_HEAD  # the head was bigger than the bound, whatever was refused
            answer = client.recv(4096)
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert requests.get("http://%s:%d/metrics" % server.address, timeout=5).status_code == 200


def test_the_server_header_names_no_version():
    with metrics.serve(f"127.0.0.1:{_port()}", lambda: [row("alpha")]) as server:
        for path in ("/metrics", "/healthz", "/nothing"):
            assert requests.get("http://%s:%d%s" % (*server.address, path), timeout=5).headers["Server"] == "certrenew"


def test_a_client_that_dribbles_its_request_is_cut_at_the_deadline(monkeypatch):
    monkeypatch.setattr(httpd, "REQUEST_TIMEOUT", 1.0)
    with metrics.serve(f"127.0.0.1:{_port()}", lambda: [row("alpha")]) as server:
        with socket.create_connection(server.address, timeout=5) as client:
            started = time.monotonic()
            for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 200:  # a byte each 0.2 s: no read ever times out
                if closed_by_peer(client):
                    break
                try:
                    client.sendall(bytes([byte]))
                except OSError:  # reset: cut
                    break
                time.sleep(0.2)
            took = time.monotonic() - started
    assert took < 4, f"the dribbling client kept its connection for {took:.1f} s"


def test_only_get_and_head_are_answered():
    with metrics.serve(f"127.0.0.1:{_port()}", lambda: [row("alpha")]) as server:
        base = "http://%s:%d" % server.address
        assert requests.post(f"{base}/healthz", timeout=5).status_code == 405
        head = requests.head(f"{base}/healthz", timeout=5)
        assert (head.status_code, head.content) == (200, b"")


def test_a_taken_port_is_one_clear_error():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(CertrenewError, match=f"cannot listen on 127.0.0.1:{port} for metrics"):
            metrics.serve(f"127.0.0.1:{port}", list).__enter__()


def test_metrics_never_on_the_responders_port():
    with pytest.raises(UsageError, match="responder's port"):
        build_settings({"listen": "127.0.0.1:49494", "metrics_listen": "0.0.0.0:49494"}, environ={})
    with pytest.raises(UsageError, match="responder's port"):
        build_settings({"listen": "127.0.0.1:49494", "metrics_listen": "[::1]:49494"}, environ={})
    assert build_settings({"metrics_listen": "127.0.0.1:49494"}, environ={}).responder.listen == Settings().responder.listen  # a socket
    assert build_settings({"metrics_listen": "127.0.0.1:9797"}, environ={}).daemon.metrics_listen == "127.0.0.1:9797"
