import pytest

from certrenew.errors import UsageError
from certrenew.pki.domains import check_normalized, normalize_domain, normalize_domains

LONGEST = ("a" * 61 + ".") * 4 + "examp"
"""253 characters, in normal form already: the fast path must still count them."""


@pytest.mark.parametrize(
    "given, expected",
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("a-b.c-d.example", "a-b.c-d.example"),
        ("x" * 63 + ".example", "x" * 63 + ".example"),
        ("*.Bücher.example.", "*.xn--bcher-kva.example"),  # a wildcard is the challenge's call, not a syntax error
        ("*.a-b.example", "*.a-b.example"),
        (LONGEST, LONGEST),
        ("1.2.3.4.5", "1.2.3.4.5"),  # digits, but no IP address
        ("192.0.2.1", "192.0.2.1"),  # an IP address is a name too (RFC 8738), in its canonical form
        ("192.0.2.1.", "192.0.2.1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("::1", "::1"),
    ],
)
def test_normalizes(given, expected):
    assert normalize_domain(given) == expected


@pytest.mark.parametrize(
    "bad, says",
    [
        ("", "empty"),
        ("has space.example", "white space"),
        ("*example.com", "inner hyphens"),
        ("a.*.example.com", "inner hyphens"),
        ("*.192.0.2.1", "a wildcard covers DNS names, not IP addresses"),
        ("fe80::1%eth0", "scoped IPv6 address .* without %eth0"),
        ("example.com\n", "white space"),
        (".example.com", "starts with a dot"),
        ("a..example", "empty label"),
        ("-a.example", "inner hyphens"),
        ("a-.example", "inner hyphens"),
        ("x" * 64 + ".example", "longer than 63"),
        ("under_score.example", "inner hyphens"),
        (("a" * 60 + ".") * 5 + "example", "253"),
        (LONGEST + "l", "253"),
        ("localhost", "single-label"),
        ("Stauts.", "single-label"),
    ],
)
def test_refuses_with_reason(bad, says):
    with pytest.raises(UsageError, match=says):
        normalize_domain(bad)


def test_list_keeps_order_and_refuses_duplicates():
    assert normalize_domains(["b.example", "A.example"]) == ["b.example", "a.example"]
    with pytest.raises(UsageError, match="duplicate"):
        normalize_domains(["a.example", "A.EXAMPLE."])
    with pytest.raises(UsageError, match="no domain"):
        normalize_domains([])


def test_what_normalize_makes_passes_the_cheap_check_and_nothing_else():
    for names in (["example.com"], ["*.example.com", "example.com"], ["bücher.example", "x-1.a.b.c"], ["a" * 63 + ".com"],
                  ["1.2.3.4", "2001:db8::1", "example.com"]):
        check_normalized(normalize_domains(names))
    for names in (["Example.com"], ["example.com."], ["bücher.example"], ["-a.example"], ["2001:DB8::1"], ["[::1]"],
                  ["*.1.2.3.4"], []):
        with pytest.raises(UsageError):
            check_normalized(names)
