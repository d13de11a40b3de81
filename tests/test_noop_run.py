"""A run where nothing is due must stay cheap: no ACME stack, no crypto, no network."""

import datetime
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("acme", "josepy", "cryptography", "requests", "OpenSSL")

PROBE = """
import sys
from certrenew.cli import main
code = main(sys.argv[1:])
print(sorted({name.split(".")[0] for name in sys.modules} & set(%r)))
sys.exit(code)
""" % (HEAVY,)


def test_nothing_due_imports_no_acme_stack(tmp_path):
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

    result = subprocess.run([sys.executable, "-c", PROBE, "run", "--config", str(config)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 21 and all(": unchanged: not due until" in line for line in lines[:-1])
    assert lines[-1] == "[]"
