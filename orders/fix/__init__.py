"""FIX protocol layer: message building/parsing, the QuickFIX gateway and the venue simulator.

Plain Python, no Django import: the Django side (models, services, management commands) wires
these pieces in.

- `messages`: pure dataclasses; build 35=D/F/G, parse 35=8/9/j/3 (never raises on input).
- `common`: session keys and SessionStatus (no quickfix import).
- `engine`, `gateway`: the QuickFIX initiator (`Gateway`, `SessionSpec`, `GatewayHandler`).
- `acceptor`, `simulator`: a pure-Python FIX acceptor on 127.0.0.1 and the venue simulator on
  top of it (QuickFIX 1.16's acceptor cannot bind to one address; see acceptor's docstring).
- `recording`: an in-memory GatewayHandler for tests, benchmarks and manual runs.
"""
