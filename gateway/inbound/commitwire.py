"""The wire between the LMTP processes and the commit process
(gateway.inbound.commitproc): frames, and a prepared message as tuples of its fields.

A frame is a 4-byte length, an 8-byte request id and a pickle, over socketpairs
made by `deskgate serve` before it forks (no socket file, nothing else can connect).
  request  (id, "commit", pack(context, comm)) → reply (id, True, result fields)
                                                  or   (id, False, (kind, text))
  request  (0, "comm", comm_out(comm))        → no reply (an LMTP connection record)
Both ends read the tuples by field order: they run the same code, forked from one
process, or checked with fingerprint() when the commit process was started again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import pickle
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from gateway.commlog import Comm, CommObj, Entry
from gateway.model import Envelope, MessageContext, Parsed

_T = TypeVar("_T")
# A frame: the pickle's length, the request id, the pickle. The id is outside the
# pickle so that a frame whose pickle cannot be read is still answered.
_HEAD = struct.Struct("!IQ")
_PROTOCOL = pickle.HIGHEST_PROTOCOL
# What a committed message's context sends back: all the LMTP process needs for
# its reply, its log line and its metrics.
RESULT_FIELDS = ("verdict", "action", "ticket_id", "ticket_number", "article_id",
                 "handoff_id", "queue", "trace")


# What a commit process started again (gateway.supervise_commit) sends first, once it can serve.
READY = b"DGREADY\n"


def fingerprint() -> str:
    """What both ends of the wire must agree on: deskgate's version, the field order
    of every object sent as a tuple, and the code of the modules the wire is made of
    (WIRE_MODULES, as loaded). A commit process started from other code (installed
    since `deskgate serve` started, under the same version or not) refuses to serve
    (gateway.supervise_commit)."""
    import gateway

    text = repr((gateway.__version__, _PROTOCOL, _ENV, _PARSED, _OBJ, _COMM, _CTX_REST,
                 RESULT_FIELDS, _CODE))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# The modules whose code decides what a message looks like on the wire and how each
# end reads it: the message model, the communication log, this module and the two
# ends. A reinstall of the same version (a local patch, a checkout, a development
# install) that changes one of them changes the fingerprint.
WIRE_MODULES = ("gateway.model", "gateway.commlog", "gateway.inbound.commitwire",
                "gateway.inbound.commitproc", "gateway.inbound.commitserver")


def code_digest(modules: tuple[str, ...]) -> str:
    """A hash of the files `modules` are loaded from (found, not imported)."""
    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin is None:
            data = b"not found"
        else:
            try:
                data = Path(origin).read_bytes()
            except OSError:     # not a file (in a zip): its place still counts
                data = origin.encode()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


# Read once, when this process imports the wire: the code it runs.
_CODE = code_digest(WIRE_MODULES)


def frame(rid: int, obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=_PROTOCOL)
    return _HEAD.pack(len(data), rid) + data


def split(buf: bytearray) -> list[tuple[int, bytes]]:
    """The whole frames at the start of buf as (id, pickle), removed from it."""
    at, size, out = 0, len(buf), []
    hsize = _HEAD.size
    while size - at >= hsize:
        n, rid = _HEAD.unpack_from(buf, at)
        if size - at - hsize < n:
            break
        out.append((rid, bytes(buf[at + hsize:at + hsize + n])))
        at += hsize + n
    if at:
        del buf[:at]
    return out


def portable(ctx: MessageContext) -> MessageContext:
    """The context as it is sent: without the prepare stages' rule results (`hits`,
    read by `filter test` only; what hit is in the trace and the log) and without
    the parsed email.message.Message object (the commit stages read the parsed
    fields; only the follow-up of a bounce reads the Message, so a bounce keeps it)."""
    _ = ctx.envelope.sha256     # hashed in the LMTP process, not by the commit's writer
    new = object.__new__(MessageContext)
    new.__dict__.update(ctx.__dict__)
    new.hits = []
    p = ctx.parsed
    if p is not None and not ctx.is_bounce:
        parsed = object.__new__(type(p))
        parsed.__dict__.update(p.__dict__)
        parsed.msg = None  # type: ignore[assignment]
        new.parsed = parsed
    return new


# The wire form of a message: its objects as tuples of their fields (by name, in
# dataclass order; both ends run the same code: forked from one process, or checked
# with fingerprint() when the commit process was started again). Pickling
# tuples of plain values costs a fraction of pickling the dataclasses, whose
# generic reduce runs Python code per object on both sides. Whatever a field holds
# (Crypto, Verdict, attachments, a bounce's Message) is pickled as it is.
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


_ENV = _names(Envelope)
_PARSED = _names(Parsed)
_OBJ = _names(CommObj)
_COMM = _names(Comm)
_CTX_REST = tuple(n for n in _names(MessageContext)
                  if n not in ("envelope", "parsed", "log"))
_TIMES = frozenset({"start", "end", "received_at"})     # of CommObj, Comm, Envelope


# Times travel as integer microseconds since the epoch when they are UTC (what
# deskgate makes): a pickled datetime runs its reduce and a timezone's on both
# sides, about a third of a message's pickling. Any other value travels as it is.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _t_out(v: Any) -> Any:
    if type(v) is datetime and v.tzinfo is UTC:
        return (v - _EPOCH) // _US
    return v


def _t_in(v: Any) -> Any:
    return _EPOCH + timedelta(microseconds=v) if type(v) is int else v


def _build(cls: type[_T], names: tuple[str, ...], values: Any) -> _T:
    obj = object.__new__(cls)
    obj.__dict__.update(zip(names, values, strict=True))
    return obj


def _obj_out(o: CommObj) -> tuple[Any, ...]:
    d = o.__dict__
    entries = [(e.priority, e.key, e.value, _t_out(e.time)) for e in o.entries]
    return tuple([entries if n == "entries" else _t_out(d[n]) if n in _TIMES else d[n]
                  for n in _OBJ])


def _obj_in(t: tuple[Any, ...]) -> CommObj:
    o = _build(CommObj, _OBJ, t)
    d = o.__dict__
    d["start"], d["end"] = _t_in(d["start"]), _t_in(d["end"])
    entries: list[tuple[Any, ...]] = d["entries"]
    o.entries = [Entry(p, k, v, _t_in(tm)) for p, k, v, tm in entries]
    return o


def comm_out(comm: Comm) -> tuple[Any, ...]:
    d = comm.__dict__
    objects = [_obj_out(o) for o in comm.objects]
    return tuple([objects if n == "objects" else _t_out(d[n]) if n in _TIMES else d[n]
                  for n in _COMM])


def comm_in(t: tuple[Any, ...]) -> Comm:
    comm = _build(Comm, _COMM, t)
    d = comm.__dict__
    d["start"], d["end"] = _t_in(d["start"]), _t_in(d["end"])
    objects: list[tuple[Any, ...]] = d["objects"]
    comm.objects = [_obj_in(o) for o in objects]
    return comm


def pack(ctx: MessageContext, comm: Comm) -> tuple[Any, ...]:
    """A prepared message and its communication as the commit process gets them."""
    ctx = portable(ctx)
    env, p = ctx.envelope.__dict__, ctx.parsed
    d = ctx.__dict__
    return (tuple([_t_out(env[n]) if n in _TIMES else env[n] for n in _ENV]), env["sha256"],
            None if p is None else tuple([p.__dict__[n] for n in _PARSED]),
            _obj_out(ctx.log), tuple([d[n] for n in _CTX_REST]), comm_out(comm))


def unpack(t: tuple[Any, ...]) -> tuple[MessageContext, Comm]:
    envt, sha, pt, logt, rest, commt = t
    env = _build(Envelope, _ENV, envt)
    env.__dict__["received_at"] = _t_in(env.__dict__["received_at"])
    env.__dict__["sha256"] = sha            # the cached_property's value
    ctx = _build(MessageContext, _CTX_REST, rest)
    ctx.envelope, ctx.log = env, _obj_in(logt)
    ctx.parsed = None if pt is None else _build(Parsed, _PARSED, pt)
    return ctx, comm_in(commt)
