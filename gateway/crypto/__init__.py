"""S/MIME and PGP: key stores, inbound decrypt/verify, outbound sign/encrypt.

The key stores are a field of the Runtime (built by gateway.runtime's builder
table) and checked by the "crypto" row of gateway.validators; "decrypt" is a
row of the inbound stage table (gateway.inbound.stages) and "crypto" one of
the outbound stage table (gateway.outbound.stages).
"""
