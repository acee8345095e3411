"""The submission listener's replies, and the enhanced status codes (RFC 2034) that
aiosmtpd's own replies are given on their way out (gateway.outbound.submission)."""

from __future__ import annotations

import re

AUTH_REQUIRED = "530 5.7.0 Authentication required"
# The same refusal while STARTTLS, which AUTH needs, is offered and not yet used (RFC
# 3207 4, Postfix's reply with smtpd_tls_security_level = encrypt)
STARTTLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first"
LOCKED_OUT = "454 4.7.0 Too many failed authentication attempts; try again later"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_BAD = "535 5.7.8 Authentication credentials invalid"
# AUTH without a mechanism, or with more than a mechanism and a response (Postfix)
AUTH_SYNTAX = "501 5.5.4 Syntax: AUTH mechanism"
# AUTH inside a mail transaction (RFC 4954 4), Postfix's reply
AUTH_IN_TRANSACTION = "503 5.5.1 Error: MAIL transaction in progress"
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
BAD_RCPT = "553 5.1.3 Malformed recipient address"
# A command that failed inside deskgate (an exception): temporary, and generic; the
# cause goes to the log, not to the client.
INTERNAL_ERROR = "451 4.3.0 Error: internal server error, try again later"
# Postfix's refusal of a message over the size limit, at MAIL (SIZE=) and after DATA
SIZE_EXCEEDED = "552 5.3.4 Message size exceeds fixed limit"
# aiosmtpd's replies at DATA, with an enhanced status code
NEED_RCPT = "503 5.5.1 Error: need RCPT command"
NO_VALID_RCPTS = "554 5.5.1 Error: no valid recipients"
DATA_SYNTAX = "501 5.5.4 Syntax: DATA"
STRICT_ASCII = "500 5.5.2 Error: strict ASCII mode"
# HELP (RFC 5321 4.1.1.8: 214); the commands the listener takes, STARTTLS where offered
HELP = "214 2.0.0 Commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET"
HELP_STARTTLS = HELP + " STARTTLS"
# VRFY confirms nothing, as Postfix with disable_vrfy_command = yes
VRFY_DISABLED = "502 5.5.1 VRFY command is disabled"
# MAIL FROM / RCPT TO syntax, Postfix's replies (gateway.outbound.submission_syntax)
MAIL_SYNTAX = "501 5.5.4 Syntax: MAIL FROM:<address>"
RCPT_SYNTAX = "501 5.5.4 Syntax: RCPT TO:<address>"
BAD_SENDER = "501 5.1.7 Bad sender address syntax"
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
BAD_SIZE = "501 5.5.4 Bad message size syntax"
UNSUPPORTED_OPTION = "555 5.5.4 Unsupported option"
# Bad or repeated DSN parameters (RFC 3461), Postfix's replies (its RCPT ones say Error:)
BAD_RET = "501 5.5.4 Bad RET parameter syntax"
BAD_ENVID = "501 5.5.4 Bad ENVID parameter syntax"
BAD_NOTIFY = "501 5.5.4 Error: Bad NOTIFY parameter syntax"
BAD_ORCPT = "501 5.5.4 Error: Bad ORCPT parameter syntax"
NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
# STARTTLS once TLS is active (RFC 3207 4), Postfix's reply
TLS_ACTIVE = "554 5.5.1 Error: TLS already active"
NEED_MAIL = "503 5.5.1 Error: need MAIL command"
# aiosmtpd's answer to the fifth unknown command, replaced by Postfix's 421
AIOSMTPD_TOO_MANY = "502 5.5.1 Too many unrecognized commands, goodbye."
# aiosmtpd's refusal of MAIL FROM SIZE= over the limit, replaced by Postfix's
AIOSMTPD_SIZE = "552 Error: message size exceeds fixed maximum message size"
# The EHLO keywords added to aiosmtpd's (RFC 2920, RFC 2034, RFC 3461).
PIPELINING = "250-PIPELINING"
ENHANCEDSTATUSCODES = "250-ENHANCEDSTATUSCODES"
DSN = "250-DSN"
# The enhanced status code (RFC 3463) given to an aiosmtpd reply that has none, by
# reply code (Postfix's for the same replies); any other code gets X.0.0.
ENHANCED_BY_CODE = {"220": "2.0.0", "221": "2.0.0", "250": "2.0.0", "252": "2.0.0",
                    "454": "4.7.0", "500": "5.5.2", "501": "5.5.4", "502": "5.5.1",
                    "503": "5.5.1", "530": "5.7.0", "552": "5.3.4", "554": "5.7.0",
                    "555": "5.5.4"}
_HAS_ENHANCED = re.compile(r"[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}(?: |\Z)")


def with_enhanced_code(status: str) -> str:
    """A 2xx/4xx/5xx reply line with an enhanced status code (RFC 2034), inserted after
    the reply code where the line has none; other lines are returned as they are."""
    if status == AIOSMTPD_SIZE:
        return SIZE_EXCEEDED
    code, sep = status[:3], status[3:4]
    if (status[:1] not in ("2", "4", "5") or not code.isdigit() or sep not in (" ", "")
            or _HAS_ENHANCED.match(status)):
        return status
    return f"{code} {ENHANCED_BY_CODE.get(code, status[0] + '.0.0')} {status[4:]}".rstrip()


def unsupported_option(param: str) -> str:
    """Postfix's 555 for a MAIL/RCPT parameter, naming it where it can be sent back."""
    if param.isascii() and param.isprintable():
        return f"{UNSUPPORTED_OPTION}: {param}"
    return UNSUPPORTED_OPTION
