"""Tracing, metrics, alerts and the audit log."""
