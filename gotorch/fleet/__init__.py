"""Beyond one host: `fleet: once` tasks coordinated through etcd (optional: `torch[etcd]`).

No leader schedules for everyone (that is where the peers' double and missed runs come from).
Every host schedules its own tasks as always; for a `fleet: once` task the store decides who runs:

* a cron task: for each scheduled instant, every matching host tries one transaction that creates
  `PREFIX/fires/TASK/<instant>` only if it does not exist; the winner runs it, the others record a
  `skipped` row with reason `fleet`. Claims are made ahead of the boundary (claims.py), so etcd adds
  no lateness; the keys live on a lease that is never kept alive, long enough that a late host
  cannot win an instant already run.
* a daemon task: one election per task, on the host's lease (kept alive); the holder runs the
  task's copies and stops them itself when it cannot renew in time (self-fencing); the key's
  revision is the run's TORCH_FLEET_TOKEN.

Modules: settings (the `fleet:` block, pure), etcd (the blocking client), coordinator (the thread
that talks to etcd and hands results to the loop), plan (`torch fleet plan`, offline, pure).
"""
