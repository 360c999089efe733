"""Cluster mode: many nodes sharing one store (docs/decisions/0014-cluster.md).

`backend.py` is the shared store's contract (records with versions, each session's outbox) and
its in-memory reference; `redis_backend.py` is the contract on Redis (its scripts in `lua/`);
`node_store.py` is a node's cache of it behind the core's `Store` port.
Nothing here is imported by a single process: it needs no broker and pays nothing for this.
"""
