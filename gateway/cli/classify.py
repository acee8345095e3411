"""classify train | evaluate | status (the optional deskgate[classify] extra)."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any

from gateway.cli.common import EX_OK, add_json, load, print_json

EX_UNAVAILABLE = 69


def register(sub: Any) -> None:
    p = sub.add_parser("classify", help="machine-learning queue/priority classifier "
                                        "(pip install 'deskgate[classify]')")
    csub = p.add_subparsers(dest="classify_command", metavar="ACTION")
    csub.required = True
    t = csub.add_parser("train", help="learn queue and priority from the stored tickets; "
                                      "activate the model unless below accuracy_floor")
    t.add_argument("--since", type=_date, metavar="DATE",
                   help="only tickets created on or after DATE (YYYY-MM-DD)")
    t.add_argument("--min-per-class", type=_at_least_2, metavar="N",
                   help="queues/priorities with fewer tickets are not learnt "
                        "(default: [classifier] min_per_class)")
    t.add_argument("--no-readback", action="store_true",
                   help="do not first read the tickets' current queues back from the helpdesk")
    add_json(t)
    t.set_defaults(func=cmd_train)
    r = csub.add_parser("readback", help="read the current queue/priority of handed-off "
                                         "tickets back from the helpdesk (OTOBO/Znuny REST, "
                                         "RT REST2); differences become moves by 'helpdesk'")
    r.add_argument("--since", type=_date, metavar="DATE",
                   help="only tickets created on or after DATE (YYYY-MM-DD)")
    add_json(r)
    r.set_defaults(func=cmd_readback)
    e = csub.add_parser("evaluate", help="cross-validate on the stored tickets: accuracy, "
                                         "macro-F1, per class, confusion, thresholds")
    e.add_argument("--since", type=_date, metavar="DATE")
    e.add_argument("--min-per-class", type=_at_least_2, metavar="N")
    e.add_argument("--folds", type=_at_least_2, default=5, help="stratified folds (default 5)")
    e.add_argument("--priority", action="store_true", help="evaluate the priority, not the "
                                                            "queue")
    add_json(e)
    e.set_defaults(func=cmd_evaluate)
    s = csub.add_parser("status", help="the active model: date, classes, samples, figures")
    add_json(s)
    s.set_defaults(func=cmd_status)


def _date(value: str) -> datetime:
    try:
        d = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def _at_least_2(value: str) -> int:
    """A count of tickets per class or of folds: as [classifier] min_per_class, at least 2
    (one ticket of a class cannot be both learnt from and tested on)."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 2:
        raise argparse.ArgumentTypeError(f"{n} is too small: at least 2")
    return n


def _need_extra(command: str) -> bool:
    from gateway.classify import INSTALL_HINT, extra_installed

    if extra_installed():
        return True
    print(f"classify {command}: {INSTALL_HINT}", file=sys.stderr)
    return False


def _progress(enabled: bool) -> Any:
    t0 = time.monotonic()

    def say(msg: str) -> None:
        if enabled:
            print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)
    return say


def _engine(cfg: Any) -> Any:
    from gateway.store.db import make_engine, migrate

    engine = make_engine(cfg.database_url, fast_path=cfg.store.fast_path)
    migrate(engine)
    return engine


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load(args)
    if not _need_extra("train"):
        return EX_UNAVAILABLE
    from gateway.classify import model_dir
    from gateway.classify.meta import ModelError
    from gateway.classify.train import train_and_activate

    engine = _engine(cfg)
    try:
        res = train_and_activate(cfg, engine, since=args.since,
                                 min_per_class=args.min_per_class,
                                 progress=_progress(not args.json),
                                 readback=not args.no_readback)
    except ModelError as exc:
        print(f"classify train: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    rb = res.readback
    if args.json:
        print_json({"activated": res.activated, "refused": res.refused,
                    "directory": str(model_dir(cfg)), "model": res.meta,
                    "readback": None if rb is None or not rb.supported else {
                        "checked": rb.checked, "moved": rb.moved, "failed": rb.failed}})
    else:
        if rb is not None and rb.supported:
            print(f"read back from the helpdesk: {rb.checked} ticket(s), {rb.moved} moved"
                  + (f", {rb.failed} failed" if rb.failed else ""))
        _print_meta(res.meta)
        if res.activated:
            print(f"model written to {model_dir(cfg)}; a running gateway uses it within "
                  "seconds" + ("" if cfg.classifier.enabled else
                               " once [classifier] enabled = true"))
        else:
            print(f"classify train: refused: {res.refused}", file=sys.stderr)
    return EX_OK if res.activated else 1


def cmd_readback(args: argparse.Namespace) -> int:
    """Exit 0 when every ticket was read back, 1 when some failed or the helpdesk cannot
    be asked (none configured, or the PostMaster pipe / webhook)."""
    from gateway.classify.readback import read_back

    cfg = load(args)
    engine = _engine(cfg)
    try:
        rb = read_back(cfg, engine, since=args.since, progress=_progress(not args.json))
    finally:
        engine.dispose()
    if args.json:
        print_json({"supported": rb.supported, "checked": rb.checked, "moved": rb.moved,
                    "unknown_queue": rb.unknown_queue, "failed": rb.failed,
                    "errors": rb.errors})
    elif not rb.supported:
        print(f"classify readback: the helpdesk ({cfg.helpdesk.type}) cannot be asked for "
              "a ticket's queue (only otobo-rest, znuny-rest and rt-rest2 can)",
              file=sys.stderr)
    else:
        print(f"{rb.checked} ticket(s) read back, {rb.moved} moved to the helpdesk's queue, "
              f"{rb.unknown_queue} in a helpdesk queue deskgate does not know, "
              f"{rb.failed} failed")
        for e in rb.errors:
            print(f"  {e}", file=sys.stderr)
    return EX_OK if rb.supported and not rb.failed else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    cfg = load(args)
    if not _need_extra("evaluate"):
        return EX_UNAVAILABLE
    from gateway.classify.meta import ModelError
    from gateway.classify.model import cross_validate
    from gateway.classify.train import examples_for

    engine = _engine(cfg)
    try:
        examples = examples_for(cfg, engine, args.since)
    finally:
        engine.dispose()
    try:
        result = cross_validate(examples, folds=args.folds,
                                min_per_class=args.min_per_class or cfg.classifier.min_per_class,
                                attr="priority" if args.priority else "queue",
                                progress=_progress(not args.json))
    except ModelError as exc:
        print(f"classify evaluate: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json(result)
        return EX_OK
    print(f"{result['label']}: {result['samples']} tickets, {result['folds']}-fold "
          f"stratified cross-validation; best: {result['best']}")
    for algo, rep in result["algorithms"].items():
        print(f"\n== {algo}" + (" (best)" if algo == result["best"] else ""))
        _print_report(rep)
    return EX_OK


def _print_report(rep: dict[str, Any]) -> None:
    print(f"accuracy {rep['accuracy']:.3f}  macro-F1 {rep['macro_f1']:.3f}  "
          f"(majority baseline {rep['majority_baseline']:.3f}, {rep['samples']} samples)")
    width = max(len(c) for c in rep["labels"])
    print(f"{'class':<{width}}  precision  recall  f1     support")
    for c, m in rep["per_class"].items():
        print(f"{c:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:.3f}  "
              f"{m['support']:7d}")
    print("confusion (rows: true, columns: predicted)")
    short = [c[:8] for c in rep["labels"]]
    print(" " * width + "  " + " ".join(f"{s:>8}" for s in short))
    for c, row in zip(rep["labels"], rep["confusion"], strict=True):
        print(f"{c:<{width}}  " + " ".join(f"{v:8d}" for v in row))
    print("confidence threshold: coverage / accuracy of the mail above it")
    for th in rep["thresholds"]:
        acc = "-" if th["accuracy"] is None else f"{th['accuracy']:.3f}"
        print(f"  >= {th['threshold']:.2f}: {th['coverage']:.3f} / {acc}")


def _print_meta(meta: dict[str, Any]) -> None:
    print(f"trained {meta.get('trained_at')} on {meta.get('tickets')} tickets in "
          f"{meta.get('train_seconds')} s" + (f" (since {meta['since']})"
                                               if meta.get("since") else ""))
    for key in ("queue", "priority"):
        head = meta.get(key)
        if not isinstance(head, dict):
            if key == "priority":
                print("priority: not learnt")
            continue
        ev = head.get("evaluation") or {}
        samples = ", ".join(f"{c} {n}" for c, n in (head.get("samples") or {}).items())
        print(f"{key}: {head.get('algorithm')}, {len(head.get('classes') or [])} classes "
              f"({samples})")
        if ev:
            print(f"  held-out ({ev.get('holdout')}): accuracy {ev.get('accuracy'):.3f}, "
                  f"macro-F1 {ev.get('macro_f1'):.3f}, majority baseline "
                  f"{ev.get('majority_baseline'):.3f}")
            for th in ev.get("thresholds") or []:
                acc = "-" if th["accuracy"] is None else f"{th['accuracy']:.3f}"
                print(f"    confidence >= {th['threshold']:.2f}: coverage {th['coverage']:.3f}, "
                      f"accuracy {acc}")


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load(args)
    from gateway.classify import extra_installed, model_dir, model_problem
    from gateway.classify.meta import ModelError, read_meta

    directory = model_dir(cfg)
    meta: dict[str, Any] | None = None
    problem = readable = ""
    try:
        meta = read_meta(directory)
    except ModelError as exc:
        problem = str(exc)
    if meta is not None:
        readable = model_problem(cfg)
    status = {"enabled": cfg.classifier.enabled, "directory": str(directory),
              "extra_installed": extra_installed(), "model": meta, "problem": problem or readable,
              "min_confidence": cfg.classifier.min_confidence}
    if args.json:
        print_json(status)
        return EX_OK if meta is not None and not readable else 1
    print(f"classifier: {'enabled' if cfg.classifier.enabled else 'disabled'}; model "
          f"directory {directory}; min_confidence {cfg.classifier.min_confidence:.2f}")
    if meta is None:
        print(f"no model: {problem}")
        return 1
    _print_meta(meta)
    if readable:
        print(f"not usable: {readable}")
        return 1
    return EX_OK
