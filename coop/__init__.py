"""Coop: a fair job scheduler for compute cooperatives."""

__version__ = "0.1.0"
