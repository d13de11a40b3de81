"""CAA checked before ordering (RFC 8659, RFC 8657), with real answers from BIND (tests/harness/bind.py):
a name whose records forbid this CA, this account or HTTP-01 is refused without an order, in one
line quoting the record; an allowed one is issued; `certrenew check` gives each name's verdict."""

import json

import pytest

from tests.harness.bind import CAA_ISSUER, ZONE

pytestmark = pytest.mark.dns_at_bind

ALLOWED = f"site.{ZONE}"


def caa(bind) -> dict[str, str]:
    return {"CERTRENEW_CAA_CHECK": "1", "CERTRENEW_CAA_RESOLVER": bind.address, "CERTRENEW_CAA_IDENTITY": CAA_ISSUER}


def orders(lab) -> int:
    return (lab.workdir / "pebble.log").read_text().count("Added order")


@pytest.mark.parametrize("label, says", [
    ("other-ca", f'other-ca.{ZONE} CAA 0 issue "ca.invalid" names ca.invalid'),
    ("pinned", f'pinned.{ZONE} CAA 0 issue "{CAA_ISSUER}; accounturi=https://ca.invalid/acct/1" pins another account'),
    ("dns-only", f'dns-only.{ZONE} CAA 0 issue "{CAA_ISSUER}; validationmethods=dns-01" allows dns-01, not http-01'),
])
def test_a_name_caa_forbids_is_refused_before_any_order(lab, bind, label, says):
    name = f"{label}.{ZONE}"
    refused = lab.certrenew(name, ALLOWED, "-q", env=caa(bind))
    lines = refused.stderr.splitlines()
    assert refused.returncode == 1 and len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert lines[0].startswith(f"certrenew: {name}: failed: {name}: its CAA records do not let this CA "
                              f"({CAA_ISSUER}) issue to this account over http-01: "), lines[0]
    assert says in lines[0] and f'publish {name}. CAA 0 issue "{CAA_ISSUER}; accounturi=https://' in lines[0]
    assert orders(lab) == 0
    meta = json.loads((lab.state_dir / "certificates" / name / "meta.json").read_text())
    assert meta["next_attempt"] is None  # the operator's records: the run after the fix goes ahead

    unchecked = lab.certrenew(name, env={"CERTRENEW_CAA_CHECK": "0"})  # pebble checks no CAA: it issues
    assert unchecked.returncode == 0 and orders(lab) == 1, unchecked.stderr


def test_an_allowed_name_is_issued_and_check_gives_every_verdict(lab, bind):
    issued = lab.certrenew(ALLOWED, env=caa(bind))
    assert issued.returncode == 0, issued.stderr
    config = lab.workdir / "certrenew.toml"
    config.write_text(f'[[certificate]]\ndomains = ["{ALLOWED}", "other-ca.{ZONE}", "127.0.0.1"]\n')
    checked = lab.certrenew("check", "--config", str(config), env=caa(bind))
    lines = [line for line in checked.stdout.splitlines() if " CAA " in line or line.split()[1:2] == ["CAA"]]
    assert checked.returncode == 1, checked.stdout
    assert f'ok   CAA {ALLOWED}: {ZONE} CAA 0 issue "{CAA_ISSUER}" allows this CA' in lines, lines
    assert any(line.startswith(f"FAIL CAA other-ca.{ZONE}: its CAA records do not let this CA") for line in lines), lines
    assert "ok   CAA 127.0.0.1: an IP address: CAA does not apply" in lines, lines
