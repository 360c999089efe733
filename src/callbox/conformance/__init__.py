"""`callbox conformance URL`: a protocol conformance suite that runs against any callbox server.

Like Autobahn|Testsuite or h2spec, it is a client: every case opens its own sessions (user ids
with a prefix unique to the run and the case, so cases never interfere and a shared server is
fine), drives the server through one behaviour of the protocol, and checks every message that
comes back, against `schemas/` and against what the protocol says should come. See
docs/conformance.md.

This module stays import-light: the CLI imports `cli` for `--help`, the rest loads on use.
"""
