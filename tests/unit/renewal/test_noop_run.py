"""A run where nothing is due must stay cheap: no ACME stack, no crypto, no network, no progress bar, no
metrics library unless metrics are asked for."""

import datetime
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
ACME_STACK = ("acme", "josepy", "cryptography", "requests", "OpenSSL")
HEAVY = ACME_STACK + ("prometheus_client", "tqdm")

PROBE = """
import sys
from certrenew.cli.commands import main
code = main(sys.argv[1:])
print(sorted({name.split(".")[0] for name in sys.modules} & set(%r)))
sys.exit(code)
""" % (HEAVY,)


def nothing_due_config(tmp_path) -> Path:
    """Twenty certificates, none of them due, and a CA that could not be reached anyway."""
    now = datetime.datetime.now(datetime.timezone.utc)
    tables = []
    for index in range(20):
        name = f"site{index}.example"
        directory = tmp_path / "state" / "certificates" / name
        directory.mkdir(parents=True)
        record = {"name": name, "domains": [name], "key_type": "ecdsa-p256", "serial": "1",
                  "not_before": now.isoformat(), "not_after": (now + datetime.timedelta(days=90)).isoformat()}
        (directory / "meta.json").write_text(json.dumps(record))
        (directory / "current.pem").write_text("bundle")
        tables.append(f'[[certificate]]\ndomains = ["{name}"]\n')
    (tmp_path / "ssl").mkdir()
    config = tmp_path / "certrenew.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nssl_dir = "{tmp_path / "ssl"}"\n'
                      'directory = "https://127.0.0.1:9/unreachable"\n' + "".join(tables))
    return config


def run_probe(*args: str) -> list[str]:
    """The lines `certrenew run` printed, then the heavy modules it imported."""
    result = subprocess.run([sys.executable, "-c", PROBE, "run", *args],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 21 and all(": unchanged: not due until" in line for line in lines[:-1])
    return lines


def test_nothing_due_imports_no_acme_stack_and_no_metrics_library(tmp_path):
    assert run_probe("--config", str(nothing_due_config(tmp_path)))[-1] == "[]"


def test_nothing_due_with_a_metrics_file_imports_only_the_metrics_library(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    metrics_file = tmp_path / "certrenew.prom"
    lines = run_probe("--config", str(nothing_due_config(tmp_path)), "--metrics-file", str(metrics_file))
    assert lines[-1] == "['prometheus_client']"
    families = {family.name: family for family in text_string_to_metric_families(metrics_file.read_text())}
    assert len(families["certrenew_certificate_expiration_timestamp_seconds"].samples) == 20
    assert families["certrenew_last_run_success"].samples[0].value == 1
    assert families["certrenew_acme_requests"].samples[0].value == 0
