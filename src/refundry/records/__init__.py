"""Approval records: hash-chained events and the case state machine (``events``), the SQLite
and PostgreSQL stores (``stores``), what never reaches a record (``masking``) and history facts
derived from the chain (``history``). Depends on the core only.
"""
