"""Installing bundles: write them into HAProxy's ssl dir, make every HAProxy serve them, prove it.

All bundles of a run are installed as one batch, all or none. The files in the ssl dir
are what HAProxy loads on its next start or reload. Each running HAProxy listed as a
Runtime API socket is updated in memory (no reload, no dropped connection). The reload
command runs, once for the batch, only when no socket is configured or one cannot do
it (an HAProxy older than 2.2, or the ssl dir not being a crt directory it loads), and,
where the configuration is named (--haproxy-config), only after `haproxy -c` accepts it.
Once per batch: a reload per certificate would make HAProxy re-read every certificate
each time, and reload signals sent back to back can be lost. A reload command's exit 0
proves little, so a reload is said to serve only when each Runtime API it was for
answers from a new worker, or the verify endpoints see it (`InstallResult.confirmed`).
Every bundle is proven loadable (parsed, its key its certificate's) before any file is
written. Then every verify endpoint must serve each new certificate for each of its
names; one it does not serve fails alone (`NotServed`).

If any step fails, every change is undone, newest first: the previous bundles go back
on disk byte for byte, into each HAProxy's memory, and through a reload if one was
done, so no node is left serving a certificate that was rolled back on another. When
HAProxy refused particular bundles (an error answer to `commit ssl cert` or, for a new
one, `add ssl crt-list`; or `haproxy -c` naming their files), the error says which
(`errors.Refused`), so the run can set them aside and install the others without them.

With a crt-list file (--crt-list) instead of a crt directory, each bundle is served by
a line of it naming the bundle: a new certificate's line is added to the file (written
atomically, the operator's lines untouched, put back on rollback) and, over the Runtime
API, with `add ssl crt-list`; a renewal replaces the certificate and keeps its line.
A certificate HAProxy loads in a `crt-store` section (`load crt <file> alias <alias>`) is
replaced under its store name, `@<store>/<alias>`, once that entry is known to load the
bundle's file: a reload or restart then serves the same certificate.

A bundle in the ssl dir that is a symbolic link is replaced by a regular file, after a
warning naming the link and its target; the rollback copy is what the link led to, the
bytes HAProxy had. Where something else is in a bundle's place (a FIFO, which would block
the read, a device such as /dev/zero, which would never end it, a directory, a file larger
than any bundle) it is left alone and that certificate refused (`Blocked`): it must be seen
before anything is written, as the rollback could not put it back. So is a certificate
whose names another bundle in the ssl dir claims (`shadowing`), before it is ordered.

One install or removal at a time goes into an ssl dir, whichever process makes it (a daemon's
follower, a run by hand, `revoke --delete`): each holds the ssl dir's flock (`exclusive`). HAProxy
has one certificate transaction for all its clients, and a second `set ssl cert` meanwhile lands in
the first's transaction (2.6), is refused (3.x) or meets "Operations on certificates are currently
locked!": a good bundle would look refused and be set aside.
"""

import contextlib
import fcntl
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certrenew.config import CertificateSpec
from certrenew.errors import Blocked, CertrenewError, NotServed, Refused
from certrenew.haproxy import service, verify
from certrenew.haproxy.crtlist import CrtList, entry_line
from certrenew.haproxy.runtime_api import (
    Rejected,
    RuntimeApi,
    RuntimeApiError,
    TransactionOpen,
    Unsupported,
    find_crt_list,
)
from certrenew.pki.bundle import CertificateInfo, check_bundle, leaf_certificate, san_names
from certrenew.pki.placeholder import write_placeholder
from certrenew.system import flock
from certrenew.system.atomicfile import fsync_directory, temp_path, write_atomic
from certrenew.system.limits import MAX_BUNDLE, Unfit, kind_of, read_regular
from certrenew.system.runcontext import RunContext

log = logging.getLogger(__name__)

HOT_UPDATE_GRACE = 3.0
"""Seconds a verify endpoint may take to show a certificate committed over the Runtime API."""
RELOAD_GRACE = 30.0
"""Seconds a verify endpoint may take to show a certificate after a reload (new worker start-up)."""
BUNDLE_MODE = 0o600
"""A new bundle's mode, less the umask: it holds the key, and HAProxy reads it as root (at
start, at reload) or gets it over the Runtime API. A replaced bundle keeps its mode less
any write bit for group and others (see `write_atomic`), so an operator who grants a group
read access keeps it across renewals; certrenew never makes a bundle world-readable itself."""
INSTALL_WAIT = 120.0
"""Seconds an install waits for another process's install into the same ssl dir: a reload and its
verification take seconds; a process stopped mid-install is waited for no longer."""
INSTALL_POLL = 0.05

SSL_DIR_ADVICE = "left alone; move it out of the ssl dir"


@dataclass(frozen=True)
class InstallResult:
    name: str
    info: CertificateInfo
    """The installed leaf, read when the bundle was proven: the caller need not parse it again."""
    path: Path
    method: str
    """"hot update", "reload" or "hot update and reload"."""
    detail: str = ""
    """Which HAProxy processes took which path, and why a reload was needed."""
    confirmed: bool = True
    """False for a reload nothing could confirm (no Runtime API to ask, no verify endpoint): the
    bundle is written and the reload command exited 0, but whether HAProxy serves it is unknown."""


@dataclass(frozen=True)
class Serving:
    """How HAProxy serves one certificate besides from its bundle's file (see `config.CertificateSpec`)."""

    crt_list_options: str = ""
    """What follows the bundle's path on a new line of the crt-list."""
    crt_store: str | None = None
    """The crt-store entry that loads the bundle's file, `@<store>/<alias>`."""


@dataclass(frozen=True)
class _Plan:
    """How one HAProxy process will take one certificate, decided before anything changes."""

    node: RuntimeApi
    file: Path
    """The bundle's file in the ssl dir."""
    path: str | None = None
    """The certificate's path as this HAProxy names it; None when only a reload can do it."""
    crt_list: str | None = None
    """The crt directory or crt-list to serve it from, where it is not served from it yet; else None."""
    line: str | None = None
    """The crt-list line to add it with (a crt directory takes the path alone)."""
    new: bool = False
    """HAProxy does not have it yet: a new certificate, not a replaced one."""
    reason: str = ""


@dataclass
class _Changes:
    """What an install changed so far, as undo steps run newest first."""

    undo: list[tuple[str, Callable[[], object]]] = field(default_factory=list)

    def add(self, what: str, step: Callable[[], object]) -> None:
        self.undo.append((what, step))

    def add_last(self, what: str, step: Callable[[], object]) -> None:
        """A step run after every other: a reload must find the previous files already put back."""
        self.undo.insert(0, (what, step))

    def roll_back(self) -> list[str]:
        """Undo everything that can be undone; return what could not."""
        failures = []
        for what, step in reversed(self.undo):
            try:
                step()
            except CertrenewError as error:
                failures.append(f"{what}: {error}")
        return failures


class Installer:
    """Puts bundles into `ssl_dir` as `<name>.pem` and makes each HAProxy serve them."""

    def __init__(self, ssl_dir: Path, reload_command: str, sockets: Sequence[str] = (),
                 configs: Sequence[Path] = (), verify_endpoints: Sequence[str] = (),
                 crt_list: Path | None = None, managed: Iterable[str] = (), context: RunContext | None = None) -> None:
        """`managed`: the certificates of the config, whose bundles are renewed and so shadow nothing;
        `context`: no signal of it cuts a file write."""
        self.ssl_dir = Path(os.path.abspath(ssl_dir))  # HAProxy names files by absolute path
        self.crt_list = Path(os.path.abspath(crt_list)) if crt_list else None
        self.reload_command = reload_command
        self.nodes = [RuntimeApi(address) for address in sockets]
        self.configs = list(configs)
        self.verify_endpoints = list(verify_endpoints)
        self.context = context
        self._lock = threading.Lock()
        self._claims: Claims | None = None
        self.managed = frozenset(self.path_of(name) for name in managed)

    def install(self, bundles: Mapping[str, bytes], serving: Mapping[str, Serving] | None = None) -> list[InstallResult]:
        """Install every bundle, or none: on failure everything is put back and the error raised.

        Each bundle is proven loadable (its key is its certificate's) before anything is written.
        `serving` says, by name, how HAProxy serves a certificate besides from its file.
        """
        unloadable, infos = {}, {}
        for name, bundle in bundles.items():
            try:
                infos[name] = check_bundle(bundle)
            except CertrenewError as error:
                unloadable[name] = f"{name}: refusing to install its bundle: {error}"
        if unloadable:  # refused like a bundle HAProxy refuses: set aside, and the others installed
            raise Refused("; ".join(unloadable.values()), list(unloadable))
        with self.exclusive():
            return self._install(bundles, serving or {}, infos)

    def _install(self, bundles: Mapping[str, bytes], serving: Mapping[str, Serving],
                 infos: Mapping[str, CertificateInfo]) -> list[InstallResult]:
        files = {self.path_of(name): bundle for name, bundle in bundles.items()}
        previous, blocked = {}, {}
        for name, path in zip(bundles, files):
            try:
                previous[path] = _served(path)
            except CertrenewError as error:
                blocked[name] = str(error)
        if blocked:  # nothing changed yet
            raise Blocked("; ".join(blocked.values()), list(blocked))
        crt_list, lines = self._crt_list_lines(bundles, serving)
        stores = {path: (name, store) for name, path in zip(bundles, files)
                  if (store := serving.get(name, Serving()).crt_store) is not None}
        plans = [plan for node in self.nodes for plan in self._plan(node, previous, lines, stores)]  # changes nothing
        changes = _Changes()
        try:
            for path, bundle in files.items():
                changes.add(f"restoring {path}", functools.partial(self._restore, path, previous[path], self.context))
                write_atomic(path, bundle, BUNDLE_MODE, keep_mode=True, sync_directory=False, context=self.context)
            try:
                fsync_directory(self.ssl_dir)  # the renames made durable once for the batch, not once per bundle
            except OSError as error:
                raise CertrenewError(f"cannot write {self.ssl_dir}: {error.strerror or error}") from error
            if crt_list is not None:
                self._add_lines(crt_list, lines, changes, self.context)
            method, detail, confirmed = self._serve(files, previous, plans, changes)
            self._verify(files, HOT_UPDATE_GRACE if method == "hot update" else RELOAD_GRACE)
        except CertrenewError as error:
            failures = changes.roll_back()
            if failures:
                raise CertrenewError(f"{error}; rollback incomplete: {'; '.join(failures)}") from error
            undone = _undone(previous)
            if isinstance(error, Refused):
                names = {str(path): name for name, path in zip(bundles, files)}
                raise type(error)(f"{error}; {undone}", [names[path] for path in error.which],
                                  {names[path]: f"{reason}; {undone}" for path, reason in error.each.items()}) from error
            raise CertrenewError(f"{error}; {undone}") from error
        except BaseException:
            changes.roll_back()
            raise
        if not confirmed:
            log.warning("the reload command exited 0, but nothing tells whether HAProxy took the reload: give "
                        "--haproxy-socket (its worker is asked) or --verify-endpoint (the served certificate is)")
        return [InstallResult(name, infos[name], path, method, detail, confirmed)
                for name, path in zip(bundles, files)]

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the ssl dir's flock, waiting up to INSTALL_WAIT for another process's install to end (see the
        module's docstring). A file system without flock on a directory is installed into without it."""
        try:
            fd = os.open(self.ssl_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:  # no ssl dir: the install's first write says so, in its words
            yield
            return
        try:
            try:
                taken = flock.wait_for(fd, fcntl.LOCK_EX, INSTALL_WAIT, INSTALL_POLL,
                                       self.context.sleep if self.context else time.sleep)
            except OSError as error:
                log.debug("installing into %s without its flock: %s", self.ssl_dir, error.strerror)
                taken = True
            if not taken:
                raise CertrenewError(f"another process has been installing into {self.ssl_dir} for "
                                     f"{INSTALL_WAIT:g} s (a certrenew stopped mid-install?); nothing was "
                                     "installed, the next attempt tries again")
            yield
        finally:
            os.close(fd)

    def _verify(self, files: Mapping[Path, bytes], grace: float) -> None:
        """Every verify endpoint serves every bundle (`NotServed` names each that is not), within
        `grace` seconds for them all: one left unserved costs the grace once, not once per bundle."""
        deadline = time.monotonic() + grace
        unserved = {}
        for path, bundle in files.items():
            try:
                verify.wait_served(self.verify_endpoints, bundle, max(0.0, deadline - time.monotonic()))
            except CertrenewError as error:
                unserved[str(path)] = str(error)
        if unserved:
            raise NotServed("; ".join(f"{Path(path).name}: {reason}" for path, reason in unserved.items()),
                            list(unserved), unserved)

    def path_of(self, name: str) -> Path:
        return self.ssl_dir / f"{name}.pem"

    def remove(self, name: str) -> tuple[str, Path | None]:
        """Make every HAProxy drop certificate `name`, then delete its bundle (and its crt-list line): over the
        Runtime API, else by a reload. Returns how, and the placeholder written if it was the last bundle
        (HAProxy refuses to start on an empty crt directory).

        Disk and HAProxy never disagree for long: the Runtime API drops it from memory before
        the file goes; a reload must not find it, so the file is moved aside (hidden, which
        HAProxy skips) and put back if `haproxy -c` or the reload fails. An HAProxy that dropped
        it over its Runtime API before another one failed keeps it dropped; the next attempt
        finds it gone there.
        """
        with self.exclusive():
            return self._remove(self.path_of(name))

    def _remove(self, file: Path) -> tuple[str, Path | None]:
        placeholder = None
        if not any(other.suffix == ".pem" and other != file for other in self.ssl_dir.iterdir()):
            placeholder = write_placeholder(self.ssl_dir)
        listed = CrtList.read(self.crt_list) if self.crt_list else None
        served_from = listed.path if listed else self.ssl_dir
        updated, reasons = [], []
        for node in self.nodes:
            try:
                crt_list = find_crt_list(node.crt_lists(), str(served_from))
                known = node.certificates().path_of(str(file))
                if known is None:
                    continue  # this HAProxy never loaded it
                if crt_list is None:
                    raise Unsupported(f"it loads no {'crt-list' if listed else 'crt directory'} {served_from}")
                node.remove_certificate(crt_list, known)
                updated.append(str(node))
            except RuntimeApiError as error:
                reasons.append(f"{node}: {error}" if isinstance(error, Unsupported) else str(error))
        unlisted = listed.without(file) if listed else None  # None, too, when no line names it
        if unlisted == listed:
            unlisted = None
        if self.nodes and not reasons:
            if unlisted is not None:
                unlisted.write(self.context)
            file.unlink(missing_ok=True)
            fsync_directory(self.ssl_dir)
            return (f"hot update, Runtime API of {', '.join(updated)}" if updated
                    else "no HAProxy had it loaded"), placeholder
        aside = temp_path(self.ssl_dir)
        moved = file.exists()
        if moved:
            file.rename(aside)
        try:
            if unlisted is not None:
                unlisted.write(self.context)
            service.check_config(self.configs)
            service.reload(self.reload_command)
        except BaseException as error:
            if moved:
                aside.rename(file)  # HAProxy still serves it: so does the ssl dir
            if listed is not None and unlisted is not None:
                listed.write(self.context)  # and its crt-list line
            if reasons and isinstance(error, CertrenewError):
                raise CertrenewError(f"{error}, after the Runtime API could not: {'; '.join(reasons)}") from error
            raise
        finally:
            fsync_directory(self.ssl_dir)
        aside.unlink(missing_ok=True)
        return "reload" + (f": {'; '.join(reasons)}" if reasons else ""), placeholder

    def check_place(self, name: str, domains: Sequence[str] = (), key_type: str = "") -> None:
        """Refuse (`Blocked`) a certificate before it is ordered when its bundle's place holds what no
        bundle can be read from, or another bundle in the ssl dir claims one of its `domains` (see
        `shadowing`): the CA is not asked for what could not be installed, or not served."""
        path = self.path_of(name)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            info = None
        except OSError as error:
            raise Blocked(str(_unreadable(path, error)), [name]) from error
        problem = _not_a_bundle(path, info.st_mode, info.st_size) if info else None
        if not problem and domains and self.crt_list is None:  # see `shadowing`
            with self._lock:  # the ssl dir is read once per run, by the first certificate's worker
                if self._claims is None:
                    self._claims = claims(self.ssl_dir, self.managed)
            problem = shadowing(self._claims, path, domains, key_type)
        if problem:
            raise Blocked(problem, [name])

    def _crt_list_lines(self, bundles: Mapping[str, bytes],
                        serving: Mapping[str, Serving]) -> tuple[CrtList | None, dict[Path, str]]:
        """The crt-list as it is, and the line serving each bundle: the one it has, else a new one."""
        if self.crt_list is None:
            return None, {}
        crt_list, lines = CrtList.read(self.crt_list), {}
        for name in bundles:
            file = self.path_of(name)
            lines[file] = crt_list.entry(file) or entry_line(file, serving.get(name, Serving()).crt_list_options)
        return crt_list, lines

    @staticmethod
    def _add_lines(crt_list: CrtList, lines: Mapping[Path, str], changes: _Changes, context: RunContext | None) -> None:
        """Add the lines the crt-list lacks, in one atomic write; the rollback writes back what it was."""
        updated = crt_list
        for file, line in lines.items():
            if crt_list.entry(file) is None:
                updated = updated.with_entry(line)
        if updated != crt_list:
            changes.add(f"restoring {crt_list.path}", functools.partial(crt_list.write, context))
            updated.write(context)

    def _plan(self, node: RuntimeApi, previous: Mapping[Path, bytes | None], lines: Mapping[Path, str],
              stores: Mapping[Path, tuple[str, str]]) -> list[_Plan]:
        """Find out whether `node` can take each certificate at runtime, and under which path."""
        served_from = self.crt_list or self.ssl_dir
        try:
            crt_list = find_crt_list(node.crt_lists(), str(served_from))
            table = node.certificates()
        except Unsupported as error:
            return [_Plan(node, file, reason=str(error)) for file in previous]
        if table.transaction is not None:
            raise TransactionOpen(node, table.transaction)
        # A crt-list's entries, as its file's lines will be: one HAProxy has from elsewhere gets its entry too.
        entries = node.crt_list_entries(crt_list) if crt_list is not None and self.crt_list else None
        plans = []
        for file, content in previous.items():
            if file in stores:
                plans.append(_store_plan(node, file, *stores[file], table.path_of(stores[file][1]), content))
                continue
            known = table.path_of(str(file))
            if known is not None and content is None:
                plans.append(_Plan(node, file, reason=f"it has {known} in memory but the file is gone, so a "
                                                      "rollback could not restore it"))
            elif known is not None and entries is not None and known not in entries:
                plans.append(_Plan(node, file, known, crt_list, lines[file]))
            elif known is not None:
                plans.append(_Plan(node, file, known))
            elif crt_list is not None and self.crt_list is not None:
                plans.append(_Plan(node, file, str(file), crt_list, lines[file], new=True))
            elif crt_list is not None:
                plans.append(_Plan(node, file, f"{crt_list}/{file.name}", crt_list, new=True))
            else:
                kind = "crt-list" if self.crt_list else "crt directory"
                plans.append(_Plan(node, file, reason=f"it loads no {kind} {served_from}"))
        return plans

    def _serve(self, files: Mapping[Path, bytes], previous: Mapping[Path, bytes | None], plans: list[_Plan],
               changes: _Changes) -> tuple[str, str, bool]:
        """Hot-update what the nodes can take, then reload once if anything is left (or no node is configured).

        Returns the method, its detail, and whether HAProxy is known to serve the files: a reload
        is confirmed by each node it was for (a new worker) or, after this, by the verify endpoints.
        """
        updated, reasons, reloading = [], [], []
        for plan in plans:
            reason = plan.reason
            if plan.path is not None:
                try:
                    self._hot_update(plan, files[plan.file], previous[plan.file], changes)
                    if str(plan.node) not in updated:
                        updated.append(str(plan.node))
                    continue
                except Unsupported as error:
                    reason = str(error)
                except Rejected as error:
                    raise Refused(f"HAProxy refused {plan.file.name}: {error}", [str(plan.file)]) from error
            if f"{plan.node}: {reason}" not in reasons:
                reasons.append(f"{plan.node}: {reason}")
            if plan.node not in reloading:
                reloading.append(plan.node)
        hot = f"Runtime API of {', '.join(updated)}" if updated else ""
        if updated:
            log.info("hot update via the %s", hot)
        if plans and not reasons:
            return "hot update", hot, True
        if reasons:
            log.warning("falling back to the reload command: %s", "; ".join(reasons))
        try:
            service.check_config(self.configs)
        except service.CheckFailed as error:
            named = [str(path) for path in files if str(path) in error.output]
            if named:
                raise Refused(str(error), named) from error
            raise
        confirmed = service.reload(self.reload_command, reloading, RELOAD_GRACE)
        changes.add_last("reloading HAProxy with the previous certificates",
                         lambda: service.reload(self.reload_command))
        return (("hot update and reload" if updated else "reload"), "; ".join(filter(None, [hot, *reasons])),
                confirmed or bool(self.verify_endpoints))

    @staticmethod
    def _hot_update(plan: _Plan, bundle: bytes, previous: bytes | None, changes: _Changes) -> None:
        node, where, crt_list = plan.node, plan.path, plan.crt_list
        assert where is not None  # only a plan with a path is hot-updated
        if plan.new:
            assert crt_list is not None  # see _plan
            node.add_certificate(crt_list, where, bundle, plan.line)
            changes.add(f"{node}: removing {where}", lambda: node.remove_certificate(crt_list, where))
            return
        assert previous is not None  # HAProxy has the certificate, so the ssl dir had it (see _plan)
        node.replace_certificate(where, bundle)
        changes.add(f"{node}: putting back {where}", lambda: node.replace_certificate(where, previous))
        if crt_list is not None:
            node.list_certificate(crt_list, where, plan.line)
            changes.add(f"{node}: taking {where} out of {crt_list}", lambda: node.unlist_certificate(crt_list, where))

    @staticmethod
    def _restore(path: Path, previous: bytes | None, context: RunContext | None) -> None:
        log.warning("removing %s: there was none before" if previous is None
                    else "restoring the previous contents of %s", path)
        try:
            if previous is None:
                path.unlink(missing_ok=True)
                fsync_directory(path.parent)
            else:
                write_atomic(path, previous, BUNDLE_MODE, keep_mode=True, context=context)
        except OSError as error:
            raise CertrenewError(f"cannot restore {path}: {error.strerror}") from error


def _store_plan(node: RuntimeApi, file: Path, name: str, store: str, known: str | None,
                content: bytes | None) -> _Plan:
    """Replace the crt-store entry `store` if it loads `file` (a reload or restart then serves what
    memory does); refuse the certificate (`Blocked`) if it loads another file."""
    if known is None:
        return _Plan(node, file, reason=f"it has no crt-store entry {store}")
    if content is None:
        return _Plan(node, file, reason=f"it has {store} in memory but {file} is gone, so a rollback could not "
                                        "restore it")
    loaded = node.loaded_file(known)
    if loaded is not None and not _may_be(PurePosixPath(loaded), file):
        raise Blocked(f"{name}: {node}: {store} loads {loaded}, not {file}, so a reload would serve that file, not "
                      f"the renewed certificate: point its `load crt` at {file}", [name])
    return _Plan(node, file, known)


def _may_be(loaded: PurePosixPath, file: Path) -> bool:
    """Whether HAProxy's `loaded` may name `file`: the same path, or its tail under a `crt-base` we cannot see."""
    return bool(loaded.parts) and PurePosixPath(file).parts[-len(loaded.parts):] == loaded.parts


Claims = dict[str, list[tuple[Path, str]]]
"""DNS name (lower case) -> the files of the ssl dir whose certificate names it, with its key's kind."""
NOT_LOADED = (".issuer", ".ocsp", ".sctl", ".key")
"""What HAProxy passes over in a crt directory, besides dot files: the extra files beside a bundle."""


def claims(ssl_dir: Path, managed: Iterable[Path] = ()) -> Claims:
    """Which names the certificates HAProxy loads from `ssl_dir` claim, read as bounded as a bundle.

    What is not a bundle (a key, a FIFO, a file that is no certificate) claims nothing. The
    bundles in `managed`, the config's certificates, are not read: they are renewed, so they shadow
    nothing (two that share a name, the apex in both, are the operator's choice, and refusing them
    would leave each one's other names to expire), and a config of 10,000 certificates would
    otherwise parse 10,000 of them for every status.
    """
    skipped = {os.fspath(path) for path in managed}
    found: Claims = {}
    try:
        entries = sorted(os.scandir(ssl_dir), key=lambda entry: entry.name)
    except OSError:
        return found
    for entry in entries:
        if entry.name.startswith(".") or entry.name.endswith(NOT_LOADED) or entry.path in skipped:
            continue
        path = ssl_dir / entry.name
        try:
            leaf = leaf_certificate(read_bundle_file(path) or b"")
        except (OSError, ValueError, IndexError, CertrenewError):
            continue
        kind = key_kind(leaf.public_key())
        for name in san_names(leaf):
            found.setdefault(name.lower(), []).append((path, kind))
    return found


def shadowed(ssl_dir: Path, specs: Sequence[CertificateSpec]) -> dict[str, str]:
    """Why HAProxy would not serve each of the config's certificates `specs` that another bundle
    shadows (see `shadowing`), by name. One served from its crt-store entry is not read from
    the ssl dir, so nothing shadows it (see issue.Issuer._check_place)."""
    directory = Path(os.path.abspath(ssl_dir))
    bundles = {spec.name: directory / f"{spec.name}.pem" for spec in specs}
    found = claims(directory, bundles.values())
    problems = {spec.name: shadowing(found, bundles[spec.name], spec.domains, spec.key_type)
                for spec in specs if not spec.crt_store}
    return {name: problem for name, problem in problems.items() if problem}


def key_kind(key_or_type: object) -> str:
    """"RSA" or "ECDSA" for a public key or a key type (`rsa2048`): HAProxy serves one of each for a name."""
    if isinstance(key_or_type, str):
        return "RSA" if key_or_type.startswith("rsa") else "ECDSA"
    if isinstance(key_or_type, rsa.RSAPublicKey):
        return "RSA"
    return "ECDSA" if isinstance(key_or_type, ec.EllipticCurvePublicKey) else type(key_or_type).__name__


def shadowing(found: Claims, own: Path, domains: Sequence[str], key_type: str) -> str | None:
    """Why the certificate to be written to `own` would not be what HAProxy serves, in one line naming
    the files and the fix; None if nothing else in `found` claims its names (`claims`, without the
    config's own bundles).

    HAProxy loads every bundle of its crt directory; for a name two of them claim with
    the same kind of key, it goes on serving the one it had first (an older
    `example.com.pem` left when the certificate was renamed `main`), which nothing then
    renews. A verify endpoint would show it only after the order, and roll back.
    Not so with a crt-list (not asked then): HAProxy serves the files it lists, each for the SNI
    its line gives, and other bundles of their directory not at all.
    """
    kind = key_kind(key_type)
    others: dict[Path, list[str]] = {}
    for domain in domains:
        for path, their_kind in found.get(domain.lower(), []):
            if path != own and their_kind == kind:
                others.setdefault(path, []).append(domain)
    return "; ".join(
        f"{path} claims {', '.join(names)} too, with an {kind} key: HAProxy loads every bundle of the ssl dir "
        f"and may go on serving that one instead of {own.name}, and nothing renews it; move it out of the ssl "
        f"dir{_or_rename(own, path)}" for path, names in others.items()) or None


def _or_rename(own: Path, other: Path) -> str:
    """The other fix, where there is one: a dual certificate's half (`main.ecdsa-p256`) cannot take
    the name of the single certificate it was (`main`)."""
    return "" if own.stem.startswith(f"{other.stem}.") else f" (or name this certificate {other.stem!r} in the config)"


def _served(path: Path) -> bytes | None:
    """The bundle HAProxy has from `path` (read through a symbolic link), or None; warns of a link."""
    content = read_bundle_file(path)
    if content is not None and os.path.islink(path):
        log.warning("%s is a symbolic link to %s; it is replaced by a regular file holding the new bundle "
                    "(the rollback puts back what the link led to)", path, os.readlink(path))
    return content


def read_bundle_file(path: Path, noun: str = "bundle", advice: str = SSL_DIR_ADVICE) -> bytes | None:
    """What a bundle file of the ssl dir holds (through a symbolic link), or None if there is none.

    Read as `limits.read_regular` reads, no further than MAX_BUNDLE: a FIFO or a device in
    the bundle's place is refused (CertrenewError), never waited on. Any other PEM file read
    from a place not ours (certbot's) is read the same way, named a `noun` with its own
    `advice` in the refusal.
    """
    try:
        return read_regular(path, MAX_BUNDLE)
    except FileNotFoundError:
        return None
    except Unfit as unfit:
        raise CertrenewError(_not_a(path, unfit.kind, noun, advice)) from unfit
    except OSError as error:
        raise _unreadable(path, error) from error


def _not_a_bundle(path: Path, mode: int, size: int, noun: str = "bundle", advice: str = SSL_DIR_ADVICE) -> str | None:
    """Why what is at `path` (of `mode` and `size`) cannot be a bundle, in one line naming it; None if it can."""
    kind = kind_of(mode)
    return _not_a(path, kind, noun, advice) if kind or size > MAX_BUNDLE else None


def _not_a(path: Path, kind: str | None, noun: str, advice: str) -> str:
    """The refusal of what is at `path`: `kind` of file, or (None) too large."""
    if kind:
        return f"{_named(path)} is {kind}, not a {noun}: {advice}"
    return f"{_named(path)} is larger than any {noun} (over {MAX_BUNDLE // 1024 ** 2} MiB): {advice}"


def _named(path: Path) -> str:
    """`path`, and where it leads if it is a symbolic link."""
    try:
        return f"{path} (a symbolic link to {os.readlink(path)})"
    except OSError:  # not a link
        return str(path)


def _unreadable(path: Path, error: OSError) -> CertrenewError:
    return CertrenewError(f"cannot read {path}: {error.strerror or error}")


def _undone(previous: Mapping[Path, bytes | None]) -> str:
    """What a rollback restored: say "put back" only where there was a previous certificate."""
    new = [path.name for path, content in previous.items() if content is None]
    if not new:
        return "the previous certificate was put back"
    if len(new) == len(previous):
        return "the new certificate was removed again (there was none before)"
    return f"the previous certificates were put back and the new {', '.join(new)} removed again"
