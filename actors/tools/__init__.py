"""Operator tools behind the `tolk` command (`tap`, `status`): they read NATS, never serve traffic."""
