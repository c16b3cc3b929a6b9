"""Thin kopf handlers: one idempotent reconcile per kind. Importing this package registers them with kopf."""
