"""A crt-list set-up end to end (`bind ... crt-list FILE`, `--crt-list FILE`): certrenew adds its
line beside the operator's and the entry into the running HAProxy, renews the entry in place,
and `revoke --delete` takes both away; file and memory agree after each run (a reload proves it)."""

import subprocess

import trustme

from certrenew.haproxy.runtime_api import RuntimeApi, argument
from certrenew.pki.bundle import leaf_info, serial_hex

NAME = "site.example"
OPTIONS = "[alpn h2,http/1.1 ssl-min-ver TLSv1.2] site.example www.site.example"


def operator_lines(lab) -> str:
    """The operator's own crt-list: a comment, a blank line, the placeholder with options and SNI filters."""
    return (f"# the operator's certificates\n\n"
            f"{lab.ssl_dir}/000-certrenew-placeholder.pem [ssl-min-ver TLSv1.2] *.placeholder.test !no.placeholder.test\n")


def crt_list_lab(lab):
    """Serve the lab's HTTPS bind from a crt-list instead of the crt directory; return the crt-list."""
    crt_list = lab.workdir / "certs.lst"
    crt_list.write_text(operator_lines(lab))
    lab.reconfigure_haproxy(f"crt {lab.ssl_dir}/\n", f"crt-list {crt_list}\n")
    return crt_list


def run(lab, crt_list, *args, expect=0):
    """certrenew with its certificate's crt-list options in a config file (`run`), or without one
    (`revoke --delete` refuses a name still configured); HAProxy updated over the Runtime API only."""
    if args[0] == "run":
        config = lab.workdir / "certrenew.toml"
        config.write_text(f'[[certificate]]\ndomains = ["{NAME}", "www.{NAME}"]\ncrt_list_options = "{OPTIONS}"\n')
        args = (*args, "--config", str(config))
    env = {"CERTRENEW_CRT_LIST": str(crt_list), "CERTRENEW_HAPROXY_SOCKET": str(lab.admin_socket),
           "CERTRENEW_VERIFY_ENDPOINT": lab.https_endpoint,
           "CERTRENEW_RELOAD_COMMAND": "sh -c 'echo reload must not run >&2; exit 7'"}
    result = lab.certrenew(*args, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == expect, result.stderr
    return result


def entries(lab, crt_list) -> list[str]:
    """The running HAProxy's entries of the crt-list, one line each as `show ssl crt-list` spells it."""
    answer = RuntimeApi(str(lab.admin_socket)).command(f"show ssl crt-list {argument(str(crt_list))}")
    return [line for line in answer.splitlines() if line and not line.startswith("#")]


def served_serial(lab, sni=NAME) -> str:
    return serial_hex(lab.served_certificate_unverified(sni).serial_number)


def test_a_certificate_is_added_renewed_and_deleted_beside_the_operators_lines(lab):
    crt_list = crt_list_lab(lab)
    bundle = lab.ssl_dir / f"{NAME}.pem"
    line = f"{bundle} {OPTIONS}\n"

    issued = run(lab, crt_list, "run")
    assert "served by hot update" in issued.stdout  # the reload command fails: the Runtime API did it
    serial = leaf_info(bundle.read_bytes()).serial
    assert crt_list.read_text() == operator_lines(lab) + line
    [entry] = [entry for entry in entries(lab, crt_list) if entry.startswith(str(bundle))]
    assert "alpn h2,http/1.1" in entry and "www.site.example" in entry
    assert served_serial(lab, f"www.{NAME}") == serial

    renewed = run(lab, crt_list, "run", "--force")
    new_serial = leaf_info(bundle.read_bytes()).serial
    assert "renewed" in renewed.stdout and new_serial != serial
    assert crt_list.read_text() == operator_lines(lab) + line  # the same line, once
    assert [entry for entry in entries(lab, crt_list) if entry.startswith(str(bundle))] == [entry]
    assert served_serial(lab) == new_serial

    deleted = run(lab, crt_list, "revoke", NAME, "--yes", "--delete")
    assert "hot update" in deleted.stdout
    assert crt_list.read_text() == operator_lines(lab)
    assert not any(entry.startswith(str(bundle)) for entry in entries(lab, crt_list))
    assert served_serial(lab) != new_serial

    lab.reload_haproxy()  # the file says what memory said: a reload starts and serves the same
    assert served_serial(lab, "a.placeholder.test") == served_serial(lab)


def test_check_names_a_line_whose_file_is_missing_and_the_haproxy_loading_the_crt_list(lab):
    crt_list = crt_list_lab(lab)
    env = {"CERTRENEW_HAPROXY_SOCKET": str(lab.admin_socket)}
    result = lab.certrenew("check", "--crt-list", str(crt_list), env=env)
    assert f"ok   crt-list {crt_list}: 1 line(s), every file exists" in result.stdout
    assert f"admin level, loads the crt-list {crt_list}" in result.stdout
    crt_list.write_text(operator_lines(lab) + f"{lab.ssl_dir}/gone.pem [alpn h2] gone.example\n")
    result = lab.certrenew("check", "--crt-list", str(crt_list), env=env)
    assert f"FAIL crt-list {crt_list}: line 4: {lab.ssl_dir}/gone.pem does not exist" in result.stdout


def test_a_certificate_haproxy_serves_from_its_crt_directory_is_listed_when_renewed(lab):
    """Moving to a crt-list: the certificate HAProxy has from the crt directory gets its line in
    the file and its entry in the running crt-list, as a reload would give it."""
    lab.certrenew(NAME, f"www.{NAME}")  # served from the crt directory
    bundle = lab.ssl_dir / f"{NAME}.pem"
    crt_list = lab.workdir / "certs.lst"
    crt_list.write_text(operator_lines(lab))
    lab.reconfigure_haproxy(f"crt {lab.ssl_dir}/\n", f"crt {lab.ssl_dir}/ crt-list {crt_list}\n")
    assert not any(entry.startswith(str(bundle)) for entry in entries(lab, crt_list))

    run(lab, crt_list, "run", "--force")

    assert crt_list.read_text() == operator_lines(lab) + f"{bundle} {OPTIONS}\n"
    [entry] = [entry for entry in entries(lab, crt_list) if entry.startswith(str(bundle))]
    assert "alpn h2,http/1.1" in entry
    assert served_serial(lab) == leaf_info(bundle.read_bytes()).serial


def test_a_bundle_of_the_ssl_dir_the_crt_list_does_not_name_shadows_nothing(lab):
    """HAProxy loads a crt-list's files, not the directory they sit in: another bundle there for the same
    names (one a frontend of its own lists, one left unlisted) is not served, so it blocks no order."""
    crt_list = crt_list_lab(lab)
    unlisted = lab.ssl_dir / "unlisted.pem"
    leaf = trustme.CA().issue_cert(NAME, key_type=trustme.KeyType.ECDSA)
    unlisted.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems) + leaf.private_key_pem.bytes())
    issued = run(lab, crt_list, "run")
    assert "served by hot update" in issued.stdout
    assert served_serial(lab) == leaf_info((lab.ssl_dir / f"{NAME}.pem").read_bytes()).serial
