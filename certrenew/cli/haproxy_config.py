"""`certrenew haproxy-config`: the lines that make every HAProxy node answer HTTP-01 by itself.

They hold the thumbprint of the configured CA's account in the state dir, so they are
printed from that account, not from a guess: a node configured with them answers exactly
what the CA asks of this account (see `certrenew.challenge.stateless`).
"""

from certrenew.acme.account import new_account_key_pem
from certrenew.challenge.stateless import no_account, snippet, thumbprint
from certrenew.config import Settings
from certrenew.config.challenges import STATELESS
from certrenew.errors import UsageError
from certrenew.state.store import Account, open_store
from certrenew.system.runcontext import RunContext


def render(settings: Settings, map_file: str | None = None, create_account: bool = False,
           context: RunContext | None = None) -> str:
    """The snippet for the account of `settings.directory_url`, as HAProxy configuration with comments
    saying where each part goes. `create_account`: make the account's key first if there is none (the CA
    registers it at the first order); without it, a missing account is a one-line error saying so."""
    store = open_store(settings, context)
    directory = settings.acme.directory_url
    account = store.load_account(directory)
    if account is None:
        if not create_account:
            raise UsageError(no_account(directory))
        with store.lock(settings.lock_timeout):
            account = store.load_account(directory)  # a run may have made it meanwhile
            if account is None:
                account = store.save_account(directory, Account(new_account_key_pem(), None))
    value = thumbprint(account.key_pem)
    lines = snippet(value, map_file)
    registered = f"account {account.uri}" if account.uri else "account key (registered at the first order)"
    text = [f"# HTTP-01 answered by HAProxy itself for the {registered} of {directory}",
            f"# (--http-01-mode {STATELESS}): the same lines on every node, no responder needed."]
    if map_file:
        text += [f"# {map_file} holds one line, `thumbprint {value}`; to answer for another account",
                 f"# without a reload: `set map {map_file} thumbprint THUMBPRINT` on the Runtime API."]
    if lines.global_lines:
        text += ["global", *(f"    {line}" for line in lines.global_lines)]
    text += ["frontend http", "    # before any other http-request rule of the port-80 frontend",
             *(f"    {line}" for line in lines.frontend_lines)]
    return "\n".join(text) + "\n"
