"""A crt-store set-up (HAProxy 3.0+): a certificate loaded as `@<store>/<alias>` is renewed by hot
update of that entry, and its file replaced, so it is still served after a reload."""

import subprocess

import pytest

from certrenew.pki.bundle import leaf_info, serial_hex

NAME = "site.example"
STORE = "@web/site"


def haproxy_line() -> tuple[int, int]:
    said = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, timeout=30).stdout.split()
    major, minor = said[2].split(".")[:2]
    return int(major), int(minor)


pytestmark = pytest.mark.skipif(haproxy_line() < (3, 0), reason="crt-store sections exist since HAProxy 3.0")


def store_lab(lab, loaded=f"{NAME}.pem"):
    """Serve the lab's HTTPS bind from a crt-store entry loading `loaded` (under crt-base the ssl dir)
    and the placeholder, no longer from the crt directory."""
    lab.reconfigure_haproxy("\ndefaults\n", f'\ncrt-store web\n    crt-base {lab.ssl_dir}\n'
                                            f'    load crt "{loaded}" alias "site"\n\ndefaults\n')
    lab.reconfigure_haproxy(f"crt {lab.ssl_dir}/\n",
                            f'crt "{STORE}" crt {lab.ssl_dir}/000-certrenew-placeholder.pem\n')


def renew(lab, expect=0):
    config = lab.workdir / "certrenew.toml"
    config.write_text(f'[[certificate]]\ndomains = ["{NAME}"]\ncrt_store = "{STORE}"\n')
    env = {"CERTRENEW_HAPROXY_SOCKET": str(lab.admin_socket), "CERTRENEW_VERIFY_ENDPOINT": lab.https_endpoint,
           "CERTRENEW_RELOAD_COMMAND": "sh -c 'echo reload must not run >&2; exit 7'"}
    result = lab.certrenew("run", "--force", "--config", str(config), env=env)
    assert result.returncode == expect, result.stderr
    return result


def served_serial(lab) -> str:
    return serial_hex(lab.served_certificate_unverified(NAME).serial_number)


def test_a_stored_certificate_is_renewed_in_place_and_still_served_after_a_reload(lab):
    assert lab.certrenew(NAME).returncode == 0  # the first one, from the crt directory
    bundle = lab.ssl_dir / f"{NAME}.pem"
    old = leaf_info(bundle.read_bytes()).serial
    store_lab(lab)
    assert served_serial(lab) == old

    result = renew(lab)

    new = leaf_info(bundle.read_bytes()).serial
    assert new != old and "served by hot update" in result.stdout  # the reload command fails
    assert served_serial(lab) == new
    lab.reload_haproxy()
    assert served_serial(lab) == new


def test_an_entry_loading_another_file_is_refused_before_anything_changes(lab):
    assert lab.certrenew(NAME).returncode == 0
    bundle = lab.ssl_dir / f"{NAME}.pem"
    (lab.ssl_dir / "elsewhere.pem").write_bytes(bundle.read_bytes())
    before = bundle.read_bytes()
    store_lab(lab, loaded="elsewhere.pem")

    result = renew(lab, expect=1)

    assert f"{STORE} loads elsewhere.pem, not {bundle}" in result.stderr
    assert "point its `load crt` at" in result.stderr
    assert bundle.read_bytes() == before
