"""What every step leans on: the run context, signals, atomic files, ownership checks, limits, commands,
listening sockets."""
