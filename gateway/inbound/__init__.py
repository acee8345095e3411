"""Inbound: LMTP listener, pipeline stages, mailbox poller."""
