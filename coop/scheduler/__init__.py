"""The scheduling policy: pure functions of a snapshot (jobs, nodes, members' ledger view, running
attempts, policy, time), no database and no clock of their own. Its one entry point is
``decide.decide``: the coordinator (``coop.server.services.scheduling``) and ``coop simulate``
(``coop.sim``) both call it."""
