"""Stateless HTTP-01: HAProxy answers the CA by itself, from the account key's thumbprint.

An HTTP-01 key authorization is `TOKEN.THUMBPRINT` (RFC 8555 section 8.1), and the
thumbprint (RFC 7638) is the same for every order of an account. So HAProxy can answer
any token with the path's last segment, a dot and the thumbprint: every node of a fleet
answers every challenge, with no responder running and nothing shared between nodes
(RFC 8555 section 8.3 allows it: the token only says which answer, the account key which
account). The token regex matters: without it HAProxy would echo whatever a client puts
in the path, under the CA's well-known prefix.
"""

from dataclasses import dataclass

from certrenew.config.challenges import HTTP_01
from certrenew.errors import CertrenewError

MAP_KEY = "thumbprint"
"""The key of the thumbprint's line in the map variant's file (`set map FILE thumbprint VALUE`)."""
ACLS = (r"acl acme-path  path_beg /.well-known/acme-challenge/",
        r"acl acme-token path_reg ^/\.well-known/acme-challenge/[A-Za-z0-9_-]+$")
REFUSE = 'http-request return status 404 content-type text/plain string "not found" if acme-path'


def no_account(directory: str) -> str:
    """What to do when the state dir has no account for the CA yet, so no thumbprint to answer with."""
    return (f"no ACME account for {directory} in the state dir yet, so no thumbprint for HAProxy to answer "
            "with: make it with `certrenew haproxy-config --create-account` and put the lines it prints in "
            "every node's configuration")


def thumbprint(account_key_pem: bytes) -> str:
    """The RFC 7638 thumbprint of the account key, base64url as it ends every key authorization."""
    import josepy  # the ACME stack: not for a run with nothing to do

    return josepy.b64.b64encode(josepy.JWK.load(account_key_pem).thumbprint()).decode()


@dataclass(frozen=True)
class Snippet:
    """The lines an HAProxy node needs to answer statelessly: those of its global section and those
    of its port-80 frontend (before any other `http-request` rule)."""

    global_lines: tuple[str, ...]
    frontend_lines: tuple[str, ...]


def snippet(account_thumbprint: str, map_file: str | None = None) -> Snippet:
    """With an environment variable set in the global section; or, with `map_file`, read from that map
    (one line, `thumbprint VALUE`), which the Runtime API's `set map` changes without a reload."""
    global_lines: tuple[str, ...]
    if map_file is None:
        answer, global_lines = "${ACME_THUMBPRINT}", (f"setenv ACME_THUMBPRINT {account_thumbprint}",)
    else:
        answer, global_lines = f"%[str({MAP_KEY}),map({map_file})]", ()
    answer_line = (f'http-request return status 200 content-type text/plain lf-string "%[path,field(4,/)].{answer}"'
                   " if acme-token")
    return Snippet(global_lines, (*ACLS, answer_line, REFUSE))


class StatelessSolver:
    """The HTTP-01 `ChallengeSolver` of a fleet whose HAProxy nodes answer by themselves: nothing to
    publish, only a check that the CA asks for the key authorization they give."""

    challenge_type = HTTP_01

    def __init__(self, account_key_pem: bytes | None, directory: str) -> None:
        """`account_key_pem`: of the account at the CA of `directory` the nodes answer for; None if the
        state dir has none yet (then every order fails before it is made, saying how to make it)."""
        self.thumbprint = thumbprint(account_key_pem) if account_key_pem else None
        self.fix = no_account(directory)

    def prepare(self, domains: list[str]) -> None:
        if self.thumbprint is None:
            raise CertrenewError(self.fix)

    def present(self, domain: str, token: str, validation: str) -> None:
        if validation != f"{token}.{self.thumbprint}":  # an order from another CA's account
            raise CertrenewError(f"the CA asks for {domain} the key authorization of an account (thumbprint "
                                 f"{validation.partition('.')[2]}) the HAProxy nodes do not answer for "
                                 f"({self.thumbprint}): `certrenew haproxy-config` prints their lines")

    def wait_ready(self) -> None:
        pass

    def cleanup(self, domain: str, token: str) -> None:
        pass
