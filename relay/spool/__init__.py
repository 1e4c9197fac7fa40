"""The opt-in durable spool (``delivery: spool``): accept, store safely, deliver later, bounce.

* `relay.spool.entry`: the encrypted file format of one spooled message (pure).
* `relay.spool.store`: the spool directory, group commit, capacity, corrupt files.
* `relay.spool.delivery`: the `relay.smtp.delivery.Delivery` that writes to the store.
* `relay.spool.sender`: the one interface the worker sends a finished message through.
* `relay.spool.schedule`: per-account rate, concurrency and backoff decisions (pure).
* `relay.spool.worker`: the background delivery worker.
* `relay.spool.dsn`: RFC 3464 delivery status notifications (pure).
* `relay.spool.clock`: the worker's time (a manual clock for tests).
* `relay.spool.crashpoints`: where the crash-safety tests SIGKILL the relay.
* `relay.spool.service`: store + worker of a running relay, stats for metrics and alerts.
"""
