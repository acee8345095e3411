"""Helpers that start and talk to real peers (Postfix, Dovecot, gpg, openssl) in tests."""
