from certrenew.cli.commands import console

console()
