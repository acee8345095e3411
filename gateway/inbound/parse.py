"""Bytes → Parsed. Tolerant of anything: bad charsets, broken MIME, RFC 2047/2231
names. Uses the compat32 parser (about ten times cheaper than policy.default)
and decodes what the helpdesk needs by hand."""

from __future__ import annotations

import email.utils
import functools
import mimetypes
import re
from collections.abc import Sequence
from email import message_from_bytes
from email.message import Message
from email.policy import compat32

from gateway.inbound.decoding import decode_bytes, decode_header_value, decode_words
from gateway.model import AttachmentData, Parsed

__all__ = ["addresses", "decode_bytes", "decode_header_value", "decode_words",
           "extract_bodies", "first_address", "html_to_text", "mailboxes", "parse_message",
           "part_filename", "set_header"]


# The common shapes `addr@dom` and `Display Name <addr@dom>` (no quotes, comments,
# groups, second mailbox, or whitespace other than space and tab at the ends or
# between words): read directly; anything else goes to getaddresses. Possessive
# loops keep it linear on hostile headers.
_ADDR = r"[^<>\s\"(),;:@\\\[\]]+@[^<>\s\"(),;:@\\\[\]]+"
_SIMPLE_ADDRESS = re.compile(
    r"[ \t]*(?:(?:[^\s\"<>,;:()@\\\[\]]++[ \t]*)*+<(" + _ADDR + r")>|(" + _ADDR + r"))[ \t]*")


_ANY_ADDRESS = re.compile(_ADDR)


def first_address(value: str) -> str:
    """The e-mail address of the first mailbox in a header value, lowercased."""
    m = _SIMPLE_ADDRESS.fullmatch(value)
    if m is not None:
        return (m.group(1) or m.group(2)).lower()
    found = addresses(value)
    return found[0] if found else ""


def addresses(value: str) -> list[str]:
    """The e-mail addresses of a header value, lowercased. Comments nested deeper than
    Python's address parser can recurse are read as bare addresses instead of raising."""
    try:
        pairs = email.utils.getaddresses([value])
    except RecursionError:
        return [a.lower() for a in _ANY_ADDRESS.findall(value)]
    return [a.strip().lower() for _n, a in pairs if "@" in a]


def mailboxes(values: Sequence[str]) -> list[tuple[str, str]]:
    """(display name, address) of every mailbox in address header values.

    Give the values as they came, not decoded: decoded first, an encoded display name
    such as `=?utf-8?q?Doe=2C_John?=` or `=?utf-8?q?boss=40example.org?=` reads as more
    addresses than the header has. Names come back as written (still encoded words),
    addresses with their 8-bit bytes as text (UTF-8, else Latin-1) and not decoded
    otherwise: RFC 2047 allows no encoded word in an address. Comments nested deeper
    than the parser recurses give the bare addresses, without names."""
    try:
        pairs = email.utils.getaddresses(list(values))
    except RecursionError:
        pairs = [("", a) for v in values for a in _ANY_ADDRESS.findall(v)]
    return [(n, a if a.isascii() else _eight_bit_text(a)) for n, a in pairs]


def _eight_bit_text(value: str) -> str:
    """A value read from a raw header: its 8-bit bytes (UTF-8, else Latin-1) as text."""
    return decode_bytes(value.encode("utf-8", "surrogateescape"), "utf-8")


# RFC 5322 specials other than '.' (which the address parser takes in a name): a decoded
# display name holding one is quoted
_NAME_SPECIALS = frozenset('()<>[]:;@\\,"')


def address_header_text(raw: str) -> tuple[str, list[str]]:
    """(text, addresses) of an address header (From, To, Cc, Reply-To) as it came.

    The text is for people and for the address parser alike: display names decoded,
    quoted where they hold a special character, so that reading the text again gives
    the addresses of the header as written (`"Doe, John" <jd@x.test>`, not
    `Doe, John <jd@x.test>` with an address `Doe`). A group keeps its shape
    (`Team: a@x.test, b@x.test;`, `undisclosed-recipients:;`), its name decoded as a
    display name is. A header without encoded words is only decoded (as
    decode_header_value). The addresses are lowercased, those with '@'.
    """
    if "=?" not in raw:
        text = decode_header_value(raw)
        return text, addresses(text)
    shown: list[str] = []
    found: list[str] = []
    for group, chunk in _groups(raw):
        members = _mailbox_texts(chunk, found)
        if group is None:
            shown.extend(members)
        else:
            name = _display_name(decode_header_value(group))
            shown.append(f"{name}:{' ' + ', '.join(members) if members else ''};")
    return ", ".join(shown), found


def _mailbox_texts(raw: str, found: list[str]) -> list[str]:
    """The mailboxes of a list as text (names decoded); their addresses go to found."""
    shown: list[str] = []
    for name, addr in mailboxes([raw]):
        addr = addr.strip()
        name = _display_name(decode_header_value(name))
        if not name and not addr:
            continue
        if "@" in addr:
            found.append(addr.lower())
        shown.append(f"{name} <{addr}>" if name else addr)
    return shown


def _display_name(name: str) -> str:
    """A decoded display name, quoted when it holds a special character."""
    if name and any(c in _NAME_SPECIALS for c in name):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


def _groups(raw: str) -> list[tuple[str | None, str]]:
    """An address list split at its groups: (group name as written, its members) or
    (None, mailboxes outside any group), in order. A ':' or ';' counts only outside
    quoted strings, comments and angle addresses; a group without its ';' ends with
    the header. One pass: hostile headers stay linear."""
    if ":" not in raw:
        return [(None, raw)]
    parts: list[tuple[str | None, str]] = []
    group: str | None = None
    start = item = 0            # the current chunk; the current address in it
    quoted = angle = escaped = False
    depth = 0                   # comment nesting
    for i, c in enumerate(raw):
        if escaped:
            escaped = False
        elif c == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = c != '"'
        elif depth:
            depth += 1 if c == "(" else -1 if c == ")" else 0
        elif c == '"':
            quoted = True
        elif c == "(":
            depth = 1
        elif angle:
            angle = c != ">"
        elif c == "<":
            angle = True
        elif group is None and c == ",":
            item = i + 1
        elif group is None and c == ":":
            parts.append((None, raw[start:item]))
            group, start = raw[item:i], i + 1
        elif group is not None and c == ";":
            parts.append((group, raw[start:i]))
            group, start, item = None, i + 1, i + 1
    parts.append((group, raw[start:]))
    return parts


def part_filename(part: Message) -> str:
    """A part's file name, decoded; '' when it has none or its parameters cannot be read
    (an RFC 2231 charset with a NUL, garbage): never an exception."""
    name: object
    try:
        # filename= of Content-Disposition, else name= of Content-Type (old mailers)
        name = part.get_filename()
    except Exception:
        try:
            name = part.get_param("name")
        except Exception:
            name = None
        if isinstance(name, tuple):
            name = email.utils.collapse_rfc2231_value(name)
    if not name:
        return ""
    if "\ufffd" in name:
        # 8-bit bytes in the header: compat32 gave them back as U+FFFD; read them again
        name = _text_part(part).get_filename() or name
    elif not name.isascii():
        name = _without_charset(part, str(name))
    return decode_header_value(str(name))


def _without_charset(part: Message, name: str) -> str:
    """An RFC 2231 name with an empty charset (filename*=''K%C3%B6ln.pdf) read as
    undeclared text is (UTF-8, else Latin-1): compat32 gave its bytes back as Latin-1."""
    for param, header in (("filename", "content-disposition"), ("name", "content-type")):
        try:
            value = part.get_param(param, header=header)
        except Exception:
            return name
        if isinstance(value, tuple):
            if value[0] or not all(ord(c) < 256 for c in name):
                return name
            return decode_bytes(name.encode("latin-1"), None)
        if value is not None:
            return name
    return name


def _header_text(part: Message, name: str) -> str:
    """A header with 8-bit bytes as text (UTF-8, else Latin-1): compat32 hands such a
    header out as an email.header.Header, whose str() turns those bytes into U+FFFD."""
    lname = name.lower()
    for k, v in part.raw_items():
        if k.lower() == lname:
            if not isinstance(v, str):
                return str(v)
            return decode_bytes(v.encode("utf-8", "surrogateescape"), "utf-8")
    return ""


def _text_part(part: Message) -> Message:
    """A part's Content-Type and Content-Disposition as text, for their parameters."""
    text = Message(policy=compat32)
    for name in ("Content-Type", "Content-Disposition"):
        value = _header_text(part, name)
        if value:
            text[name] = value
    return text


# The Content-Transfer-Encoding values compat32's get_payload(decode=True) knows as
# they are written; anything else is looked at once more (_cte_token).
_CTE_AS_IS = frozenset(("7bit", "8bit", "binary", "base64", "quoted-printable"))


def _cte_token(part: Message) -> None:
    """Make a Content-Transfer-Encoding written with blanks or quotes around it
    ('base64 ', '"quoted-printable"') the token it names, so that the part is decoded:
    compat32 compares the value as written and hands such a part back undecoded."""
    value = part.get("Content-Transfer-Encoding")
    if not isinstance(value, str) or value.lower() in _CTE_AS_IS:
        return
    token = value.strip(" \t\r\n\"'").lower()
    if token != value.lower() and token in _CTE_AS_IS:
        part.replace_header("Content-Transfer-Encoding", token)


def _payload(part: Message) -> bytes:
    _cte_token(part)
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    raw = part.get_payload()
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogateescape")
    return b""


_HEADER_END = re.compile(rb"\r?\n\r?\n")
# A header line as the compat32 feed parser reads it without a defect: a name of
# printable ASCII other than ':' (no space: "From " lines and "Name : x" are not
# headers to it), then ':'.
_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+:")


def _plain_headers(head: str) -> Message | None:
    """The header block (without its last line end) as the feed parser would read it,
    for the shape it reads without a defect: name-colon lines and their continuation
    lines, CRLF or LF line ends. None for anything else (the feed parser decides)."""
    if "\r" in head.replace("\r\n", ""):
        return None
    lines = head.split("\n")
    msg = Message(policy=compat32)
    name = ""
    value: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not name:
                return None
            value.append("\n" + line)
            continue
        if not _HEADER_NAME.match(line):
            return None
        if name:
            msg.set_raw(name, "".join(value).rstrip("\r\n"))
        name, _, first = line.partition(":")
        value = [first.lstrip(" \t")]
    msg.set_raw(name, "".join(value).rstrip("\r\n"))
    return msg


def _message(raw: bytes) -> Message:
    """compat32 parse; a single-part body is attached whole instead of line by line."""
    m = _HEADER_END.search(raw)
    if m is None or m.start() == 0:
        return message_from_bytes(raw, policy=compat32)
    msg = _plain_headers(raw[:m.start()].decode("ascii", "surrogateescape"))
    if msg is None:
        msg = message_from_bytes(raw[:m.end()], policy=compat32)
    ctype = msg.get_content_type()
    if (ctype.startswith(("multipart/", "message/")) and ctype != "message/partial") \
            or msg.defects:
        return message_from_bytes(raw, policy=compat32)
    # message/partial (RFC 2046 5.2.2) is a fragment: only the first one starts with the
    # headers of the message it is part of; read as a message, a later one lost the
    # first lines of its text as headers
    msg.set_payload(raw[m.end():].decode("ascii", "surrogateescape"))
    return msg


# 'Name : value' (RFC 5322 4.5, obs-optional): white space between the name and the colon
_OBS_NAME = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]+:", re.MULTILINE)


def _obs_header_names(raw: bytes) -> bytes:
    """raw with 'Name :' header lines of the top-level header block as 'Name:'. The feed
    parser ends the header block at such a line, so it and every header after it went
    into the body. Only what is parsed changes; the stored message keeps its bytes."""
    m = _HEADER_END.search(raw)
    end = m.start() if m is not None else len(raw)
    if _OBS_NAME.search(raw, 0, end) is None:
        return raw
    return _OBS_NAME.sub(rb"\1:", raw[:end]) + raw[end:]


# Headers whose addresses are read before their encoded words are decoded
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "reply-to"})


def _flat(raw: bytes) -> Message:
    """raw's top-level headers with everything after them as one text payload."""
    m = _HEADER_END.search(raw)
    end = m.end() if m is not None else len(raw)
    msg = message_from_bytes(raw[:end], policy=compat32)
    msg.set_payload(raw[end:].decode("ascii", "surrogateescape"))
    return msg


def parse_message(raw: bytes, *, with_attachments: bool = True) -> Parsed:
    """Parse raw bytes. Never raises for malformed input; defects are recorded."""
    raw = _obs_header_names(raw)
    try:
        return _parsed(_message(raw), with_attachments)
    except RecursionError:
        # MIME nested deeper than the parser recurses (a thousand multiparts in each
        # other): the top-level headers, and the rest is text, as a reader without MIME
        # sees it; the raw message is stored as it came anyway
        p = _parsed(_flat(raw), with_attachments, top_type="text/plain")
        p.defects.append("NestingTooDeep")
        return p


def _parsed(msg: Message, with_attachments: bool, top_type: str | None = None) -> Parsed:
    """The Parsed of a parsed message; `top_type` overrides its content type for the
    bodies."""
    headers: list[tuple[str, str]] = []
    # One pass over the headers instead of one per field read below.
    first: dict[str, str] = {}
    every: dict[str, list[str]] = {}
    encoded: list[str] = []     # address headers with encoded words: read from raw below
    for k, rv in msg.raw_items():
        v = decode_header_value(rv)
        headers.append((k, v))
        lk = k.lower()
        if lk in _ADDRESS_HEADERS and isinstance(rv, str) and "=?" in rv \
                and lk not in encoded:
            encoded.append(lk)
        if lk not in first:
            first[lk] = v
            every[lk] = [v]
        else:
            every[lk].append(v)
    from_email: str | None = None
    for lk in encoded:
        texts = [address_header_text(str(rv)) for k, rv in msg.raw_items() if k.lower() == lk]
        first[lk] = texts[0][0]
        every[lk] = [t for t, _a in texts]
        if lk == "from":
            from_email = texts[0][1][0] if texts[0][1] else ""
    p = Parsed(msg=msg, headers=headers)
    p.subject = first.get("subject", "")
    p.from_addr = first.get("from", "")
    p.from_email = first_address(p.from_addr) if from_email is None else from_email
    p.to_addr = ", ".join(every.get("to", ()))
    p.cc_addr = ", ".join(every.get("cc", ()))
    p.reply_to = first.get("reply-to", "")
    p.message_id = first.get("message-id", "").strip()
    p.in_reply_to = first.get("in-reply-to", "").strip()
    p.references = first.get("references", "").strip()
    p.content_type = msg.get_content_type()
    p.defects = [type(d).__name__ for d in msg.defects]
    extract_bodies(msg, p, with_attachments=with_attachments,
                   top_type=top_type or p.content_type)
    return p


def set_header(p: Parsed, name: str, value: str) -> str | None:
    """A postmaster filter's `set` of `name`: the header list and the field read from it.

    As OTOBO's GetParam, what the ticket and article are made from follows the set
    value: Subject, From (with from_email), To, Cc, Reply-To, In-Reply-To, References
    and Message-ID (also what duplicate detection keys on: the same filters give the
    same value for the same message). The header replaces the first occurrence and
    drops the others (one value); address headers are stored as address_header_text
    gives them, so that reading the stored header again gives the same addresses.
    `Body` is no header: it replaces the text body and drops the HTML body, which
    would still show what the filter replaced. Returns the value now in the header
    list, None for Body. p.msg, the message as it came, is not touched.
    """
    lname = name.lower()
    if lname == "body":
        p.body, p.body_html = value, None
        return None
    if lname in _ADDRESS_HEADERS:
        value, found = address_header_text(value)
        if lname == "from":
            p.from_addr, p.from_email = value, found[0] if found else ""
        elif lname == "to":
            p.to_addr = value
        elif lname == "cc":
            p.cc_addr = value
        else:
            p.reply_to = value
    elif lname == "subject":
        p.subject = value
    elif lname == "in-reply-to":
        p.in_reply_to = value.strip()
    elif lname == "references":
        p.references = value.strip()
    elif lname == "message-id":
        p.message_id = value.strip()
    out: list[tuple[str, str]] = []
    done = False
    for k, v in p.headers:
        if k.lower() != lname:
            out.append((k, v))
        elif not done:
            out.append((name, value))
            done = True
    if not done:
        out.append((name, value))
    p.headers = out
    return value


def extract_bodies(msg: Message, p: Parsed, *, with_attachments: bool = True,
                   top_type: str | None = None) -> None:
    """Fill body, body_html and attachments of p from a (possibly inner) MIME tree.

    `top_type` is msg's content type when the caller has it already.
    """
    p.body, p.body_html, p.attachments = "", None, []
    text_done = False
    for part, ctype in _leaves(msg, top_type):
        maintype = ctype.split("/")[0]
        disp_value = part.get("Content-Disposition") or ""
        if not isinstance(disp_value, str):     # 8-bit bytes in it (see _header_text)
            disp_value = _header_text(part, "Content-Disposition")
        disp = disp_value.split(";")[0].strip().lower()
        fname = part_filename(part)
        is_attachment = disp == "attachment" or (bool(fname) and disp != "inline") \
            or ctype not in ("text/plain", "text/html") or maintype == "message"
        if not is_attachment and ctype == "text/plain" and not text_done:
            p.body = _lf(decode_bytes(_payload(part), part.get_content_charset()))
            text_done = True
            continue
        if not is_attachment and ctype == "text/html" and p.body_html is None:
            p.body_html = decode_bytes(_payload(part), part.get_content_charset())
            continue
        if with_attachments:
            content = _rfc822(part) if maintype == "message" else _payload(part)
            cid = part.get("Content-ID") or ""
            if not isinstance(cid, str):
                cid = _header_text(part, "Content-ID")
            p.attachments.append(AttachmentData(
                filename=fname or _message_name(part, ctype)
                or _default_name(ctype, len(p.attachments) + 1),
                content_type=ctype, content=content,
                content_id=cid.strip().strip("<>"),
                disposition=disp or "attachment"))
    # no text part, or an empty one next to the HTML (mailers that fill in only the HTML
    # of multipart/alternative): the text is the HTML's
    if p.body_html is not None and (not text_done or not p.body.strip()):
        p.body = html_to_text(p.body_html)


def _lf(text: str) -> str:
    """text with LF line ends: CRLF and a bare CR (old Mac mailers) each become one LF."""
    text = text.replace("\r\n", "\n")
    return text.replace("\r", "\n") if "\r" in text else text


def _leaves(msg: Message, top_type: str | None = None) -> list[tuple[Message, str]]:
    """Leaf parts in order with their content types; an attached message
    (message/rfc822) is one leaf."""
    if top_type is None:
        top_type = msg.get_content_type()
    if not msg.is_multipart() and not top_type.startswith("multipart/"):
        return [(msg, top_type)]        # single part: the common case
    out: list[tuple[Message, str]] = []
    reread: int | None = None           # characters _unsplit may still parse again
    stack = [msg]
    while stack:
        part = stack.pop()
        ctype = top_type if part is msg else part.get_content_type()
        if part is not msg and ctype.split("/")[0] == "message":
            out.append((part, ctype))
        elif part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(p for p in reversed(payload) if isinstance(p, Message))
        elif ctype.startswith("multipart/"):
            # Its parts were not found. Splitting it parses its body again, so all such
            # splits together parse at most twice the first one's body: multiparts in
            # multiparts, each re-read whole, took time quadratic in their number.
            body = part.get_payload()
            text = body if isinstance(body, str) else ""
            if reread is None:
                reread = 2 * len(text)
            found = _unsplit(part, text) if len(text) <= reread else None
            if found is None:
                out.append((part, "text/plain"))
            else:
                reread -= len(text)
                stack.append(found)
        else:
            out.append((part, ctype))
    return out


# A delimiter line ('--' and a boundary of 1 to 70 characters, not ending in a space,
# RFC 2046 5.1.1) followed by a part header: what a multipart's body is split at when its
# boundary parameter is missing or is not the one the body uses. Only one length of the
# boundary can be followed by the line's trailing white space: linear in the line.
_DELIMITER = re.compile(
    r"^--([^\s\"\\](?:[^\r\n\"\\]{0,68}[^\s\"\\])?)[ \t]*+\r?\n(?i:content-[\w-]+:)",
    re.MULTILINE)


def _unsplit(part: Message, payload: str) -> Message | None:
    """A multipart the parser could not split (no boundary parameter, or one its body
    `payload` never uses), as mail programs read it: split at the boundary its body does
    use; None when there is none (its body is text)."""
    m = _DELIMITER.search(payload)
    if m is None:
        return None
    head = f'Content-Type: {part.get_content_type()}; boundary="{m.group(1)}"\n\n'
    found = message_from_bytes((head + payload).encode("utf-8", "surrogateescape"),
                               policy=compat32)
    return found if found.is_multipart() else None
    m = _DELIMITER.search(payload)
    if m is not None:
        head = f'Content-Type: {part.get_content_type()}; boundary="{m.group(1)}"\n\n'
        found = message_from_bytes((head + payload).encode("utf-8", "surrogateescape"),
                                   policy=compat32)
        if found.is_multipart():
            return found, found.get_content_type()
    return part, "text/plain"


def _rfc822(part: Message) -> bytes:
    inner = part.get_payload()
    if isinstance(inner, list) and inner:
        blocks = inner[:1] if part.get_content_type() == "message/rfc822" else inner
        out = []
        for block in blocks:
            if not isinstance(block, Message):
                continue
            try:
                out.append(block.as_bytes())
            except RecursionError:
                out.append(_text_bytes(block))
            except Exception:
                out.append(str(block).encode("utf-8", "replace"))
        return b"\n".join(out)
    return _payload(part)


def _text_bytes(msg: Message) -> bytes:
    """msg as text, without recursion: for messages attached to messages deeper than the
    generator recurses. Each part's headers as parsed, a blank line, its payload; the
    parts of a multipart between its boundary lines (preamble and epilogue left out)."""
    out: list[bytes] = []
    stack: list[Message | bytes] = [msg]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            out.append(item)
            continue
        head = "".join(f"{k}: {v}\n" for k, v in item.raw_items()) + "\n"
        out.append(head.encode("utf-8", "surrogateescape"))
        payload = item.get_payload()
        if isinstance(payload, str):
            out.append(payload.encode("utf-8", "surrogateescape"))
            continue
        if not isinstance(payload, list):
            continue
        boundary = item.get_boundary() if item.get_content_maintype() == "multipart" else None
        pieces: list[Message | bytes] = []
        for sub in payload:
            if boundary is not None:
                pieces.append(f"\n--{boundary}\n".encode("utf-8", "surrogateescape"))
            pieces.append(sub if isinstance(sub, Message)
                          else str(sub).encode("utf-8", "surrogateescape"))
        if boundary is not None:
            pieces.append(f"\n--{boundary}--\n".encode("utf-8", "surrogateescape"))
        stack.extend(reversed(pieces))
    return b"".join(out)


# What no file name may hold (on Windows): in a name deskgate makes up, each becomes '_'
_NOT_IN_NAMES = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')


def _message_name(part: Message, ctype: str) -> str:
    """The name of an attached message sent without one: its Subject and '.eml', as
    OTOBO names it; '' for another type or without a Subject."""
    if ctype != "message/rfc822":
        return ""
    inner = part.get_payload()
    if not isinstance(inner, list) or not inner or not isinstance(inner[0], Message):
        return ""
    subject = _header_text(inner[0], "Subject")
    if "=?" in subject:
        subject = decode_header_value(subject)
    name = _NOT_IN_NAMES.sub("_", _unfold_name(subject)).strip(" .")[:150].rstrip(" .")
    return name + ".eml" if name else ""


def _unfold_name(value: str) -> str:
    return " ".join(value.split())


# Extensions of unnamed attachments where Python's table has none or an odd first one
_EXTENSIONS = {"message/rfc822": "eml", "text/html": "html", "text/plain": "txt",
               "message/delivery-status": "txt", "text/rfc822-headers": "txt",
               "message/disposition-notification": "txt", "text/calendar": "ics",
               "application/ics": "ics", "text/vcard": "vcf", "application/xml": "xml",
               "text/xml": "xml", "image/jpeg": "jpg", "application/ms-tnef": "dat",
               "application/pgp-signature": "asc", "application/pgp-keys": "asc",
               "application/pkcs7-signature": "p7s", "application/x-pkcs7-signature": "p7s",
               "application/pkcs7-mime": "p7m", "application/x-pkcs7-mime": "p7m",
               "application/octet-stream": "bin"}


@functools.cache
def _mime_types() -> mimetypes.MimeTypes:
    """Python's built-in table only: the same names on every host (no /etc/mime.types)."""
    return mimetypes.MimeTypes(filenames=())


def _default_name(ctype: str, n: int) -> str:
    """The name of an attachment sent without one: file-<n> and the extension of its type
    (file-1.pdf, file-2.png), .bin when the type has none, so that it opens as what it is."""
    ext = _EXTENSIONS.get(ctype)
    if ext is None:
        guessed = _mime_types().guess_extension(ctype, strict=False)
        ext = guessed[1:] if guessed else "bin"
    return f"file-{n}.{ext}"


# What holds no text for a reader: scripts, styles, the title, comments (Outlook puts
# markup in conditional comments). Each is dropped up to its closing tag, the first of
# each kind after it (as `<!--.*?-->|<(script|style|title)\b.*?</\1>` does).
_HIDDEN_OPEN = re.compile(r"(?i)<(script|style|title)\b|<(!--)")
_HIDDEN_CLOSE = {"script": re.compile(r"(?i)</script>"), "style": re.compile(r"(?i)</style>"),
                 "title": re.compile(r"(?i)</title>"), "!--": re.compile("-->")}


def _drop_hidden(html: str) -> str:
    """html without scripts, styles, title and comments. One pass: an opening whose
    closing no longer follows is left as text, as are all later ones of its kind (the
    regex scanned to the end for each of them)."""
    out: list[str] = []
    pos = 0
    unclosed: set[str] = set()
    while True:
        m = _HIDDEN_OPEN.search(html, pos)
        if m is None:
            break
        kind = (m.group(1) or m.group(2)).lower()
        end = None if kind in unclosed else _HIDDEN_CLOSE[kind].search(html, m.end())
        if end is None:
            unclosed.add(kind)
            if len(unclosed) == len(_HIDDEN_CLOSE):
                break
            out.append(html[pos:m.end()])
        else:
            out.append(html[pos:m.start()])
        pos = m.end() if end is None else end.end()
    out.append(html[pos:])
    return "".join(out)


def html_to_text(html: str) -> str:
    """A plain rendering of an HTML body for helpdesks that show text. Linear in the
    length of the HTML, also for hostile input (runs of '<' without '>')."""
    import html as htmlmod

    text = _drop_hidden(_lf(html))
    text = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</tr>|</h[1-6]>|</li>", "\n", text)
    # A '<' with no '>' after it is text; only the part up to the last '>' can hold tags,
    # and there every '<' finds its '>' at once.
    last = text.rfind(">") + 1
    text = re.sub(r"<[^>]+>", "", text[:last]) + text[last:]
    text = htmlmod.unescape(text)
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n\s*\n\s*\n+", "\n\n", text).strip()
