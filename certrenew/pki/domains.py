"""Domain names and IP addresses: normalized to the form the CA and HAProxy see, refused early when invalid.

An IP address is a name too (RFC 8738): ordered as an `ip` identifier, validated over
HTTP-01 at the address itself, and written in its one canonical form ("2001:db8::1").
"""

import ipaddress
import re
from collections.abc import Sequence

from certrenew.errors import UsageError

_LABEL_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_LABEL = re.compile(_LABEL_PATTERN)
_NORMALIZED = re.compile(rf"(?:\*\.)?(?:{_LABEL_PATTERN}\.)+{_LABEL_PATTERN}")
"""A name already in normal form, ASCII: `normalize_domain` would return it unchanged."""


def normalize_domain(name: str) -> str:
    """Lower-case A-label form without a trailing dot (an IP address: its canonical form), or
    UsageError naming the fault.

    "*.example.com" passes as a wildcard; `certrenew.challenge.solver` decides whether the
    certificate's challenge type can validate it.
    """
    if _NORMALIZED.fullmatch(name) and len(name) <= 253 and not is_ip_address(name.removeprefix("*.")):
        return name  # the usual case, a tenth of the checks below (a config of 10,000 certificates)
    original = name
    if name.split() != [name]:  # empty, or white space anywhere
        raise UsageError(f"invalid domain {original!r}: it is empty or contains white space")
    if name.startswith("."):
        raise UsageError(f"invalid domain {original!r}: it starts with a dot")
    name = name.removesuffix(".")
    # A wildcard is a whole leftmost "*" label; whether a challenge can validate it is the solver's call.
    wildcard = "*." if name.startswith("*.") else ""
    name = name.removeprefix(wildcard)
    if is_ip_address(name):
        return _normalize_ip(original, name, wildcard)
    if not name.isascii():
        import idna  # its tables only for the rare non-ASCII name, not at every start

        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as error:
            raise UsageError(f"invalid domain {original!r}: {error}") from error
    name = wildcard + name.lower()
    if "." not in name.removeprefix(wildcard):
        raise UsageError(f"invalid domain {original!r}: a single-label name; public CAs issue certificates only "
                         "for names under a public suffix, e.g. example.com")
    if len(name) > 253:
        raise UsageError(f"invalid domain {original!r}: longer than 253 characters")
    for label in name.removeprefix(wildcard).split("."):
        if not label:
            raise UsageError(f"invalid domain {original!r}: it has an empty label")
        if len(label) > 63:
            raise UsageError(f"invalid domain {original!r}: label {label[:20]!r}... is longer than 63 characters")
        if not _LABEL.fullmatch(label):
            raise UsageError(
                f"invalid domain {original!r}: label {label!r} may hold only letters, digits and "
                "inner hyphens"
            )
    return name


def normalize_domains(names: list[str]) -> list[str]:
    """Normalize every name, keep their order, and refuse an empty list or a duplicate."""
    if not names:
        raise UsageError("no domain given")
    normalized = []
    for name in names:
        domain = normalize_domain(name)
        if domain in normalized:
            raise UsageError(f"duplicate domain {name!r}")
        normalized.append(domain)
    return normalized


def check_normalized(names: Sequence[str]) -> None:
    """UsageError unless `names` are already what `normalize_domains` makes of them.

    For certificates handed to the library API: cheaper than normalizing again, as a run
    checks every certificate it is given (10,000 of them, say) and most come normalized.
    """
    if (names and len(set(names)) == len(names)
            and all(isinstance(name, str) and len(name) <= 253 and _NORMALIZED.fullmatch(name)
                    and not is_ip_address(name.removeprefix("*.")) for name in names)):
        return
    if not all(isinstance(name, str) for name in names):
        raise UsageError(f"domains must be strings, not {names!r}")
    normalized = normalize_domains(list(names))  # raises, naming the fault, for an invalid name
    if normalized == list(names):  # IP addresses, which the quick test above leaves to this one
        return
    raise UsageError(f"domains {', '.join(names)} are not in normal form: give {', '.join(normalized)}")


def is_ip_address(name: str) -> bool:
    """Whether `name` is an IPv4 or IPv6 address (an IPv6 one may come in brackets, as in a URL)."""
    name = name.strip("[]")
    if ":" not in name and not name.replace(".", "").isdigit():
        return False  # neither IPv6 nor dotted digits: the usual answer, without raising (10,000 names)
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _normalize_ip(original: str, address: str, wildcard: str) -> str:
    ip = ipaddress.ip_address(address.strip("[]"))
    if wildcard:
        raise UsageError(f"invalid domain {original!r}: a wildcard covers DNS names, not IP addresses")
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        raise UsageError(f"invalid domain {original!r}: a scoped IPv6 address means a link of this host only; "
                         f"give the address without %{ip.scope_id}")
    return ip.compressed
