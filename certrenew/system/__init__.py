"""What every step leans on: signals, atomic files, ownership checks, limits, commands, listening sockets."""
