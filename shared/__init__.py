"""The memory-mapped layer shared by host and guest: guest RAM, stage-2 table, control blocks,
and the run directory that names them."""
