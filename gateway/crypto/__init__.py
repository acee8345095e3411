"""S/MIME and PGP: key stores, inbound decrypt/verify, outbound sign/encrypt.

gateway.app PLUGINS imports gateway.crypto.inbound, which registers the runtime
builder and the config validator (keystore); its "decrypt" stage is a row of the
table in gateway.inbound.stages.
"""
