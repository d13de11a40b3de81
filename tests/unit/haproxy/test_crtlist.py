"""A crt-list file: certrenew's lines found, added and removed; the operator's kept byte for byte."""

from pathlib import Path

import pytest

from certrenew.errors import CertrenewError
from certrenew.haproxy.crtlist import CrtList, entry_line

OPERATOR = ("# our certificates\n"
            "\n"
            "/etc/haproxy/ssl/main.pem [alpn h2 ssl-min-ver TLSv1.2] example.com !old.example.com\n"
            "  # indented comment /etc/haproxy/ssl/site.pem\n"
            "relative.pem\n")
SITE = Path("/etc/haproxy/ssl/site.pem")


@pytest.fixture
def crt_list(tmp_path) -> Path:
    path = tmp_path / "certs.lst"
    path.write_text(OPERATOR)
    return path


def test_a_line_is_added_after_the_operators_and_removed_again_leaving_them_byte_for_byte(crt_list):
    listed = CrtList.read(crt_list)
    assert listed.entry(SITE) is None  # a comment naming it is no line
    added = listed.with_entry(entry_line(SITE, " [alpn h2] site.example "))
    added.write()
    assert crt_list.read_text() == OPERATOR + f"{SITE} [alpn h2] site.example\n"
    assert CrtList.read(crt_list).entry(SITE) == f"{SITE} [alpn h2] site.example"
    CrtList.read(crt_list).without(SITE).write()
    assert crt_list.read_text() == OPERATOR


def test_the_files_named_are_listed_with_their_line_numbers(crt_list):
    assert CrtList.read(crt_list).files() == [(3, "/etc/haproxy/ssl/main.pem"), (5, "relative.pem")]


def test_a_last_line_without_a_line_break_gets_one_before_the_new_line(tmp_path):
    path = tmp_path / "certs.lst"
    path.write_text("/a.pem")
    assert CrtList.read(path).with_entry(entry_line(SITE)).content == f"/a.pem\n{SITE}\n".encode()


def test_a_path_with_a_blank_cannot_be_a_line():
    with pytest.raises(CertrenewError, match="blank"):
        entry_line(Path("/etc/my certs/site.pem"))


def test_a_missing_crt_list_is_one_clear_error(tmp_path):
    with pytest.raises(CertrenewError, match=f"cannot read the crt-list {tmp_path}/nope.lst: No such file"):
        CrtList.read(tmp_path / "nope.lst")
