"""S/MIME and PGP: key stores, inbound decrypt/verify, outbound sign/encrypt.

gateway.app PLUGINS imports gateway.crypto.inbound, which registers the runtime
builder, the config validator (keystore) and the inbound "decrypt" stage.
"""
