"""An HAProxy crt-list file: the certificates a `bind ... crt-list FILE` serves, one per line.

A line is `<certificate file> [<bind options>] [[!]<SNI filter> ...]`; a line whose first
character other than blanks is `#` is a comment. certrenew edits only the lines that
name its own bundles (by absolute path, as it writes them), and writes the file
atomically: the operator's lines, comments and blank lines stay byte for byte as they were.
"""

from dataclasses import dataclass
from pathlib import Path

from certrenew.errors import CertrenewError
from certrenew.system.atomicfile import write_atomic
from certrenew.system.limits import MAX_CONFIG, Unfit, read_regular
from certrenew.system.runcontext import RunContext

MODE = 0o644
"""A new crt-list's mode: it names files, it holds no key."""


def entry_line(file: Path, options: str = "") -> str:
    """The line that serves `file` with `options` (what follows the file name: `[alpn h2] www.example.com`)."""
    if any(char.isspace() for char in str(file)):
        raise CertrenewError(f"{file}: a crt-list line cannot name a file with a blank in its path")
    return f"{file} {options.strip()}".rstrip()


def _file_of(line: str) -> str | None:
    """The certificate file a line names; None for a blank line or a comment."""
    words = line.split(None, 1)
    return None if not words or words[0].startswith("#") else words[0]


@dataclass(frozen=True)
class CrtList:
    """One crt-list file as read: its lines, to find, add and remove the one naming a file."""

    path: Path
    lines: tuple[str, ...]
    """Each line with its line break, as read."""

    @classmethod
    def read(cls, path: Path) -> "CrtList":
        """Read bounded, as a config is: a FIFO in its place would hang the run holding the state dir's
        lock, a link to /dev/zero would read until memory runs out."""
        try:
            text = read_regular(path, MAX_CONFIG).decode()
        except OSError as error:
            raise CertrenewError(f"cannot read the crt-list {path}: {error.strerror or error}") from error
        except (Unfit, UnicodeDecodeError) as error:
            raise CertrenewError(f"cannot read the crt-list {path}: {error}") from error
        return cls(path, tuple(text.splitlines(keepends=True)))

    @property
    def content(self) -> bytes:
        return "".join(self.lines).encode()

    def files(self) -> list[tuple[int, str]]:
        """(line number, certificate file) of every line that names one."""
        return [(number, file) for number, line in enumerate(self.lines, 1) if (file := _file_of(line)) is not None]

    def entry(self, file: Path) -> str | None:
        """The line (without its line break) that names `file`; None if none does."""
        for line in self.lines:
            named = _file_of(line)
            if named is not None and Path(named) == file:
                return line.rstrip("\r\n")
        return None

    def with_entry(self, line: str) -> "CrtList":
        """This list with `line` added at the end (a line break first if the last line has none)."""
        last = self.lines[-1:] and self.lines[-1]
        head = (*self.lines[:-1], last + "\n") if last and not last.endswith("\n") else self.lines
        return CrtList(self.path, (*head, line + "\n"))

    def without(self, file: Path) -> "CrtList":
        """This list without the lines that name `file`."""
        kept = tuple(line for line in self.lines if (named := _file_of(line)) is None or Path(named) != file)
        return CrtList(self.path, kept)

    def write(self, context: RunContext | None = None) -> None:
        write_atomic(self.path, self.content, MODE, keep_mode=True, context=context)
