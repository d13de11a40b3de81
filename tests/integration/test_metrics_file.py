"""`certrenew run --metrics-file`: what node_exporter's textfile collector reads after each run."""

from prometheus_client.parser import text_string_to_metric_families

from certrenew.pki.bundle import leaf_info

CERTIFICATES = {"alpha": "alpha.example", "beta": "beta.example"}


def write_config(lab, names):
    path = lab.workdir / "certrenew.toml"
    path.write_text("".join(f'[[certificate]]\nname = "{name}"\ndomains = ["{CERTIFICATES.get(name, name)}"]\n'
                            for name in names))
    return path


def scrape(path) -> dict:
    """{metric: value} for the run facts, {metric: {name: value}} for the per-certificate ones."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            if "name" in sample.labels:
                found.setdefault(sample.name, {})[sample.labels["name"]] = sample.value
            else:
                found[sample.name] = sample.value
    return found


def test_metrics_file_after_success_failure_and_removal(lab):
    metrics_file = lab.workdir / "certrenew.prom"
    config = write_config(lab, ["alpha", "beta"])
    first = lab.certrenew("run", "--config", str(config), "--metrics-file", str(metrics_file))
    assert first.returncode == 0, first.stderr

    found = scrape(metrics_file)
    for name, sni in CERTIFICATES.items():
        lab.wait_served_serial(sni, leaf_info((lab.ssl_dir / f"{name}.pem").read_bytes()).serial)
        served = lab.served_certificate(sni)
        assert found["certrenew_certificate_expiration_timestamp_seconds"][name] == (
            served.not_valid_after_utc.timestamp())
    assert found["certrenew_certificate_ready"] == {"alpha": 1, "beta": 1}
    assert found["certrenew_certificate_failures"] == {"alpha": 0, "beta": 0}
    assert set(found["certrenew_certificate_renewal_timestamp_seconds"]) == {"alpha", "beta"}
    assert found["certrenew_last_run_success"] == 1
    assert found["certrenew_acme_requests_total"] > 0
    assert 0 < found["certrenew_run_duration_seconds"] < 120
    assert metrics_file.stat().st_mode & 0o044 == 0o044  # node_exporter runs as another user
    first_run = found["certrenew_last_run_timestamp_seconds"]

    lab.break_dns("broken.example")
    config = write_config(lab, ["alpha", "beta", "broken.example"])
    failing = lab.certrenew("run", "--config", str(config), "--metrics-file", str(metrics_file))
    assert failing.returncode == 1 and "broken.example: failed" in failing.stderr
    found = scrape(metrics_file)
    assert found["certrenew_last_run_success"] == 0
    assert found["certrenew_last_run_timestamp_seconds"] > first_run
    assert found["certrenew_certificate_ready"] == {"alpha": 1, "beta": 1, "broken.example": 0}
    assert found["certrenew_certificate_failures"]["broken.example"] == 1
    assert "broken.example" not in found["certrenew_certificate_expiration_timestamp_seconds"]

    # beta and the broken one leave the config: their series leave the file; nothing is due, no ACME request.
    config = write_config(lab, ["alpha"])
    quiet = lab.certrenew("run", "--config", str(config), "--metrics-file", str(metrics_file))
    assert quiet.returncode == 0, quiet.stderr
    found = scrape(metrics_file)
    assert found["certrenew_certificate_ready"] == {"alpha": 1}
    assert list(found["certrenew_certificate_expiration_timestamp_seconds"]) == ["alpha"]
    assert found["certrenew_last_run_success"] == 1 and found["certrenew_acme_requests_total"] == 0


def test_metrics_file_written_when_the_run_itself_fails(lab):
    """A run that fails before any certificate (no ssl dir) still leaves last_run_success 0."""
    metrics_file = lab.workdir / "certrenew.prom"
    config = write_config(lab, ["alpha"])
    result = lab.certrenew("run", "--config", str(config), "--metrics-file", str(metrics_file),
                           env={"CERTRENEW_SSL_DIR": str(lab.workdir / "no-such-dir")})
    assert result.returncode == 2 and "bootstrap-ssl-dir" in result.stderr and result.stderr.count("\n") == 1
    found = scrape(metrics_file)
    assert found["certrenew_last_run_success"] == 0
    assert found["certrenew_certificate_ready"] == {"alpha": 0}


def test_single_domain_form_writes_its_certificate(lab):
    metrics_file = lab.workdir / "certrenew.prom"
    result = lab.certrenew("solo.example", "--metrics-file", str(metrics_file))
    assert result.returncode == 0, result.stderr
    found = scrape(metrics_file)
    expiry = leaf_info((lab.ssl_dir / "solo.example.pem").read_bytes()).not_after.timestamp()
    assert found["certrenew_certificate_expiration_timestamp_seconds"] == {"solo.example": expiry}
    assert found["certrenew_last_run_success"] == 1 and found["certrenew_acme_requests_total"] > 0
