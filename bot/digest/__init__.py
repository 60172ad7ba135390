"""Digests: each rep's morning to-do list and each manager's daily team digest (markdown + chart),
built with grouped queries, sent through the outbox once per (kind, recipient, day).
"""
