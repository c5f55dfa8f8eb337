"""midshift: the gateway agent (firmware), the host CLI (host_tools), the
simulator and the board files, under one name that no other project's
packages collide with."""
