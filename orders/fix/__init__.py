"""FIX protocol layer: message building/parsing, the QuickFIX gateway and the venue simulator.

Plain Python, no Django import: the Django side (models, services, management commands) wires
these pieces in. `messages` is pure; `gateway` and `simulator` need the `quickfix` package.
"""
