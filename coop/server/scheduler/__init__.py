"""Placement logic: pure functions of (jobs, nodes, ledger view, policy). No database access here."""
