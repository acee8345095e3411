"""The classifier end to end: trained on tickets stored through the pipeline, evaluated
on mails it never saw, routing new LMTP mail, falling back below the threshold."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.app import Gateway
from gateway.classify.model import load
from gateway.classify.text import message_text
from gateway.cli import main as cli_main
from gateway.config import load_config
from gateway.store.tables import CommEntry, Ticket, TicketMove
from tests.conftest import RunningGateway
from tests.integration.classify.conftest import (
    TRAIN,
    VIA_CATCH_ALL,
    Trained,
    deliver_all,
    write_conf,
)
from tests.integration.classify.corpus import Mail, generate, to_bytes
from tests.peers.lmtp import LmtpClient

REPO = Path(__file__).resolve().parents[3]


def lmtp(rg: RunningGateway, raw: bytes, rcpt: str = "helpdesk@example.org") -> int:
    c = LmtpClient(rg.socket_path)
    try:
        c.lhlo()
        _, replies = c.transaction("customer@example.net", [rcpt], raw)
    finally:
        c.close()
    return replies[0][0]


def newest_ticket(gw: Gateway) -> Ticket:
    with gw.engine.connect() as conn:
        return conn.execute(select(Ticket).order_by(Ticket.id.desc())).first()  # type: ignore[return-value]


def classifier_log(gw: Gateway) -> list[tuple[str, str]]:
    with gw.engine.connect() as conn:
        return [(r.priority, r.value) for r in conn.execute(
            select(CommEntry.priority, CommEntry.value).where(CommEntry.key == "Classifier")
            .order_by(CommEntry.id))]


def billing_mail() -> Mail:
    return Mail(subject="Invoice 48213 charged twice",
                body="Hello,\n\nyou charged invoice 48213 twice to our credit card, please "
                     "refund the second payment.\n\nKind regards\nAnna", queue="Billing",
                priority="3 normal", lang="en", sender="anna@acme.test")


class TestTraining:
    def test_held_out_accuracy_well_above_the_majority_baseline(self, trained: Trained):
        """On mails the model never saw, accuracy is far above always guessing the biggest
        queue, in every language of the corpus."""
        model = load(trained.model)
        truth = [m.queue for m in trained.held_out]
        pred = [model.predict(message_text(m.subject, m.body))["queue"]
                for m in trained.held_out]
        accuracy = sum(p == t for p, t in zip(pred, truth, strict=True)) / len(truth)
        baseline = Counter(truth).most_common(1)[0][1] / len(truth)
        assert accuracy >= 0.85, accuracy
        assert accuracy >= baseline + 0.4, (accuracy, baseline)
        for lang in ("en", "de", "fr"):
            sub = [(p, m.queue) for p, m in zip(pred, trained.held_out, strict=True)
                   if m.lang == lang]
            assert sub and sum(p == t for p, t in sub) / len(sub) >= 0.7, lang

    def test_metadata_records_date_classes_samples_and_evaluation(self, trained: Trained):
        """model.json tells when, on what and how well the model was trained."""
        meta = json.loads((trained.model / "model.json").read_text())
        assert meta["tickets"] == TRAIN
        assert meta["moves"] == VIA_CATCH_ALL
        assert meta["queue"]["classes"] == ["Billing", "HR", "Sales", "Technical"]
        assert sum(meta["queue"]["samples"].values()) == TRAIN
        ev = meta["queue"]["evaluation"]
        assert ev["accuracy"] > ev["majority_baseline"] + 0.3
        assert set(ev["candidates"]) == {"sgd-logistic", "complement-nb"}
        assert [t["threshold"] for t in ev["thresholds"]][:2] == [0.0, 0.5]
        assert meta["priority"]["classes"]    # priorities with >= min_per_class tickets
        assert meta["trained_at"][:4].isdigit()

    def test_moved_tickets_train_with_their_new_queue(self, trained: Trained):
        """Tickets that arrived through the catch-all (default queue) and were moved by an
        agent are labelled with the queue they were moved to; none is left in Raw."""
        gw = Gateway(trained.config)
        try:
            with gw.engine.connect() as conn:
                moves = conn.execute(select(TicketMove)).all()
                raw_left = conn.execute(select(Ticket).where(Ticket.queue == "Raw")).all()
        finally:
            gw.close()
        assert len(moves) == VIA_CATCH_ALL and {m.from_queue for m in moves} == {"Raw"}
        assert raw_left == []

    def test_refuses_to_activate_below_the_accuracy_floor(self, trained: Trained, tmp_path,
                                                          capsys):
        """With accuracy_floor above what the data allows, train exits 1 and the active
        model is left as it was."""
        before = (trained.model / "model.json").read_bytes()
        conf = write_conf(tmp_path, trained.model, "accuracy_floor = 1.0",
                          database=f"sqlite:///{trained.root}/var/deskgate.db")
        assert cli_main(["-c", str(conf), "classify", "train"]) == 1
        err = capsys.readouterr().err
        assert "below [classifier] accuracy_floor 1.00" in err
        assert (trained.model / "model.json").read_bytes() == before


class TestCli:
    def test_evaluate_json(self, trained: Trained, capsys):
        """evaluate cross-validates: accuracy, macro-F1, per-class precision/recall, the
        confusion matrix and the coverage/accuracy of several thresholds."""
        capsys.readouterr()
        assert cli_main(["-c", str(trained.conf), "classify", "evaluate", "--folds", "3",
                         "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        best = out["algorithms"][out["best"]]
        assert out["samples"] == TRAIN and out["folds"] == 3
        assert best["accuracy"] > best["majority_baseline"] + 0.3
        assert set(best["per_class"]) == {"Billing", "HR", "Sales", "Technical"}
        assert {"precision", "recall", "f1", "support"} <= set(best["per_class"]["HR"])
        assert sum(map(sum, best["confusion"])) == TRAIN
        cov = [t["coverage"] for t in best["thresholds"]]
        assert cov == sorted(cov, reverse=True) and cov[0] == 1.0

    def test_evaluate_and_status_text(self, trained: Trained, capsys):
        """The text forms show the figures a person reads."""
        capsys.readouterr()
        assert cli_main(["-c", str(trained.conf), "classify", "evaluate", "--folds", "2"]) == 0
        out = capsys.readouterr().out
        assert "macro-F1" in out and "confusion" in out and ">= 0.70:" in out
        assert cli_main(["-c", str(trained.conf), "classify", "status"]) == 0
        out = capsys.readouterr().out
        assert f"on {TRAIN} tickets" in out and "held-out" in out and "Billing" in out

    def test_train_since_a_future_date_has_nothing_to_learn(self, trained: Trained, capsys):
        """--since keeps only newer tickets; with none, train says so and exits 1."""
        assert cli_main(["-c", str(trained.conf), "classify", "train", "--since",
                         "2100-01-01"]) == 1
        assert "need at least two queues" in capsys.readouterr().err

    def test_status_without_model(self, classify_conf, tmp_path, capsys):
        """status says there is no model and exits 1."""
        conf = classify_conf(model=tmp_path / "nothing")
        assert cli_main(["-c", str(conf), "classify", "status", "--json"]) == 1
        out = json.loads(capsys.readouterr().out)
        assert out["model"] is None and "model.json missing" in out["problem"]

    def test_missing_extra_says_how_to_install(self, classify_conf, monkeypatch, capsys):
        """Without scikit-learn, train says which extra to install."""
        import gateway.classify

        monkeypatch.setattr(gateway.classify, "extra_installed", lambda: False)
        assert cli_main(["-c", str(classify_conf()), "classify", "train"]) == 69
        assert "pip install 'deskgate[classify]'" in capsys.readouterr().err

    def test_check_refuses_enabled_without_a_model(self, classify_conf, tmp_path, capsys):
        """check fails for enabled = true with no model and says how to train one; with the
        trained model it passes."""
        conf = classify_conf(model=tmp_path / "none")
        assert cli_main(["-c", str(conf), "check"]) == 1
        err = capsys.readouterr().err
        assert "classifier.enabled" in err and "deskgate classify train" in err
        assert cli_main(["-c", str(classify_conf()), "check"]) == 0

    def test_move_rejects_unknown_queue(self, trained: Trained, capsys):
        """tickets move names the queues when given one that does not exist."""
        assert cli_main(["-c", str(trained.conf), "tickets", "move", "id:1", "Nowhere"]) == 1
        assert "Billing" in capsys.readouterr().err


class TestRouting:
    def test_lmtp_mail_to_the_catch_all_is_routed_by_the_model(
            self, classify_conf, run_gateway: Callable[..., RunningGateway]):
        """A billing mail to helpdesk@ (default queue) lands in Billing; the decision,
        confidence and runner-up are on the ticket and in the communication log."""
        from gateway import metrics

        def predicted() -> float:
            return metrics.REGISTRY.get_sample_value(
                "deskgate_classifier_predictions_total", {"result": "predicted"}) or 0.0

        before = predicted()
        rg = run_gateway(load_config(classify_conf("enabled = true\nmin_confidence = 0.5")))
        assert lmtp(rg, to_bytes(billing_mail(), "helpdesk@example.org")) == 250
        assert predicted() == before + 1
        t = newest_ticket(rg.gateway)
        assert t.queue == "Billing"
        c = t.classification
        assert c["queue"] == "Billing" and c["applied_queue"] is True
        assert c["confidence"] >= 0.5 and c["runner_up"] != "Billing"
        assert 0 <= c["runner_up_confidence"] <= c["confidence"]
        logged = classifier_log(rg.gateway)
        assert logged and logged[-1][0] == "Info" and logged[-1][1].startswith("queue Billing")

    def test_held_out_mails_routed_over_lmtp(self, classify_conf, trained: Trained,
                                             run_gateway: Callable[..., RunningGateway]):
        """Held-out mails sent to the catch-all mostly land in their own queue; those the
        model is unsure about stay in the default queue."""
        rg = run_gateway(load_config(classify_conf("enabled = true\nmin_confidence = 0.6")))
        sample = trained.held_out[:40]
        for m in sample:
            assert lmtp(rg, to_bytes(m, "helpdesk@example.org")) == 250
        with rg.gateway.engine.connect() as conn:
            rows = conn.execute(select(Ticket.queue, Ticket.classification)
                                .order_by(Ticket.id)).all()
        assert len(rows) == len(sample)
        right = sum(r.queue == m.queue for r, m in zip(rows, sample, strict=True))
        assert right >= 0.8 * len(sample)
        for r in rows:
            c = r.classification
            assert (r.queue == c["queue"]) == (c["confidence"] >= 0.6)
            assert r.queue == c["queue"] or r.queue == "Raw"

    def test_low_confidence_falls_back_to_the_default_queue(
            self, classify_conf, trained: Trained):
        """The same mail is routed when min_confidence is just below its confidence and
        stays in the default queue (priority too) when it is just above."""
        model = load(trained.model)
        raw = to_bytes(billing_mail(), "helpdesk@example.org")
        conf_value = model.predict(message_text(billing_mail().subject,
                                                billing_mail().body))["confidence"]
        results = {}
        for name, th in (("below", conf_value - 0.01), ("above", min(conf_value + 0.01, 1.0))):
            conf = classify_conf(f"enabled = true\nmin_confidence = {th:.4f}\n"
                                 "min_priority_confidence = 0.0")
            (conf.parent / "var").mkdir(exist_ok=True)
            gw = Gateway(load_config(conf))
            try:
                gw.prepare_store()
                deliver_all(gw, [(raw, "helpdesk@example.org", "")])
                results[name] = (newest_ticket(gw), classifier_log(gw))
            finally:
                gw.close()
            (conf.parent / "var" / "deskgate.db").unlink()
        routed, kept = results["below"][0], results["above"][0]
        assert routed.queue == "Billing" and routed.classification["applied_queue"]
        assert kept.queue == "Raw" and kept.classification["applied_queue"] is False
        assert kept.priority == "3 normal" and kept.classification["applied_priority"] is False
        assert "below" not in results["below"][1][-1][1]
        assert "default queue Raw kept" in results["above"][1][-1][1]

    def test_address_and_header_decisions_are_not_overridden(
            self, classify_conf, run_gateway: Callable[..., RunningGateway]):
        """Mail to a queue's own address, or with a trusted X-Deskgate-Queue, keeps that
        queue; the classifier is not consulted (nothing recorded)."""
        rg = run_gateway(load_config(classify_conf(
            "enabled = true\nmin_confidence = 0.0", extra="")))
        assert lmtp(rg, to_bytes(billing_mail(), "sales@example.org"),
                    "sales@example.org") == 250
        t = newest_ticket(rg.gateway)
        assert t.queue == "Sales" and t.classification == {}
        raw = b"X-Deskgate-Queue: HR\r\n" + to_bytes(billing_mail(), "helpdesk@example.org")
        gw = rg.gateway
        deliver_all(gw, [(raw, "helpdesk@example.org", "")])   # trusted source
        t = newest_ticket(gw)
        assert t.queue == "HR" and t.classification == {}

    def test_follow_up_is_not_classified(self, classify_conf,
                                         run_gateway: Callable[..., RunningGateway]):
        """A reply to an existing ticket joins it; the classifier does not move it."""
        rg = run_gateway(load_config(classify_conf("enabled = true\nmin_confidence = 0.0")))
        first = to_bytes(billing_mail(), "helpdesk@example.org")
        assert lmtp(rg, first) == 250
        t = newest_ticket(rg.gateway)
        hr = generate(30, seed=3)
        reply = next(m for m in hr if m.queue == "HR")
        reply.subject = f"Re: [Ticket#{t.number}] {reply.subject}"
        reply.sender = billing_mail().sender
        assert lmtp(rg, to_bytes(reply, "helpdesk@example.org")) == 250
        with rg.gateway.engine.connect() as conn:
            tickets = conn.execute(select(Ticket)).all()
        assert len(tickets) == 1 and tickets[0].queue == "Billing"

    def test_missing_model_warns_once_and_delivers(
            self, classify_conf, tmp_path, run_gateway: Callable[..., RunningGateway]):
        """Enabled without a model: mail goes to the default queue, one Warn in the log."""
        import gateway.classify

        gateway.classify._warned.clear()
        rg = run_gateway(load_config(classify_conf(model=tmp_path / "empty")))
        for _ in range(3):
            assert lmtp(rg, to_bytes(billing_mail(), "helpdesk@example.org")) == 250
        with rg.gateway.engine.connect() as conn:
            queues = [r.queue for r in conn.execute(select(Ticket.queue))]
        assert queues == ["Raw"] * 3
        logged = classifier_log(rg.gateway)
        assert len(logged) == 1 and logged[0][0] == "Warn"
        assert "deskgate classify train" in logged[0][1]

    def test_new_model_picked_up_without_restart(
            self, classify_conf, trained: Trained, tmp_path, monkeypatch,
            run_gateway: Callable[..., RunningGateway]):
        """A model written while the gateway runs is used for the next messages."""
        import shutil

        import gateway.classify

        monkeypatch.setattr(gateway.classify, "RECHECK_SECONDS", 0.0)
        gateway.classify._warned.clear()
        model = tmp_path / "later"
        rg = run_gateway(load_config(classify_conf("enabled = true\nmin_confidence = 0.5",
                                                   model=model)))
        assert lmtp(rg, to_bytes(billing_mail(), "helpdesk@example.org")) == 250
        assert newest_ticket(rg.gateway).queue == "Raw"
        shutil.copytree(trained.model, model, dirs_exist_ok=True)
        assert lmtp(rg, to_bytes(billing_mail(), "helpdesk@example.org")) == 250
        assert newest_ticket(rg.gateway).queue == "Billing"

    def test_filter_test_shows_the_decision(self, classify_conf, tmp_path, capsys):
        """filter test prints the classifier's queue, confidence and runner-up."""
        msg = tmp_path / "m.eml"
        msg.write_bytes(to_bytes(billing_mail(), "helpdesk@example.org"))
        conf = classify_conf("enabled = true\nmin_confidence = 0.5")
        assert cli_main(["-c", str(conf), "filter", "test", str(msg), "--json"]) == 0
        d = json.loads(capsys.readouterr().out)["decision"]
        assert d["queue"] == "Billing" and d["classifier"]["queue"] == "Billing"
        assert "from the classifier" in d["reason"]
        assert cli_main(["-c", str(conf), "filter", "test", str(msg)]) == 0
        out = capsys.readouterr().out
        assert "classifier: Billing" in out and "runner-up" in out

    def test_tickets_show_the_classification_and_moves(
            self, classify_conf, run_gateway: Callable[..., RunningGateway], capsys):
        """tickets show has the decision; a move is recorded and shown."""
        conf = classify_conf("enabled = true\nmin_confidence = 0.5")
        rg = run_gateway(load_config(conf))
        assert lmtp(rg, to_bytes(billing_mail(), "helpdesk@example.org")) == 250
        number = newest_ticket(rg.gateway).number
        capsys.readouterr()
        assert cli_main(["-c", str(conf), "tickets", "move", number, "Sales",
                         "--priority", "4 high", "--by", "agent7"]) == 0
        assert "Billing (3 normal) → Sales (4 high)" in capsys.readouterr().out
        assert cli_main(["-c", str(conf), "tickets", "show", number, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["queue"] == "Sales" and shown["priority"] == "4 high"
        assert shown["classification"]["queue"] == "Billing"
        assert shown["moves"][0]["from_queue"] == "Billing"
        assert shown["moves"][0]["by"] == "agent7"
        assert cli_main(["-c", str(conf), "tickets", "show", number]) == 0
        out = capsys.readouterr().out
        assert "classifier: Billing" in out and "Billing → Sales" in out


class TestRetraining:
    def test_retrains_after_moves(self, classify_conf, trained: Trained, tmp_path, capsys):
        """With retrain_after_moves = 2, two moves make the scheduled check retrain; the
        new model knows about the moves."""
        import asyncio
        import shutil

        from gateway.classify.service import Retrainer

        root = tmp_path / "gw"
        model = tmp_path / "model"
        shutil.copytree(trained.model, model)
        conf = classify_conf("enabled = true\nretrain_after_moves = 2", model=model)
        (root / "var").mkdir(parents=True, exist_ok=True)
        shutil.copy(trained.root / "var" / "deskgate.db", root / "var" / "deskgate.db")
        gw = Gateway(load_config(conf))
        try:
            gw.prepare_store()
            r = Retrainer(gw)
            assert asyncio.run(r.check()) is False          # nothing moved yet
            before = json.loads((model / "model.json").read_text())
            time.sleep(0.01)                                # moves strictly after trained_at
            with gw.engine.connect() as conn:
                numbers = [t.number for t in conn.execute(
                    select(Ticket.number).where(Ticket.queue == "Sales").limit(2))]
            for n in numbers:
                assert cli_main(["-c", str(conf), "tickets", "move", n, "HR"]) == 0
            assert asyncio.run(r.check()) is True
            after = json.loads((model / "model.json").read_text())
        finally:
            gw.close()
        assert after["trained_at"] > before["trained_at"]
        assert after["moves"] == VIA_CATCH_ALL + 2


    def test_interval_makes_an_old_model_due(self, classify_conf, trained: Trained,
                                             tmp_path, run_gateway):
        """serve runs the retraining check; with retrain_interval a model older than the
        interval is due, a fresh one is not, and without the keys nothing is ever due."""
        import shutil

        model = tmp_path / "model"
        shutil.copytree(trained.model, model)
        rg = run_gateway(load_config(classify_conf("enabled = true\nretrain_interval = '1d'",
                                                   model=model)))
        r = next(s for s in rg.gateway.services if s.name == "classifier-retrain")
        assert r.due() == ""                                    # trained minutes ago
        meta = json.loads((model / "model.json").read_text())
        meta["trained_at"] = "2026-01-01T00:00:00+00:00"
        (model / "model.json").write_text(json.dumps(meta))
        assert "h old" in r.due()
        rg.gateway.config = load_config(classify_conf("enabled = true", model=model))
        assert r.due() == ""


class TestLightImports:
    @pytest.mark.parametrize("argv", [["--help"], ["deliver", "-r", "helpdesk@example.org"]])
    def test_cli_does_not_import_scikit_learn(self, classify_conf, argv):
        """`deskgate --help` and `deliver` with the classifier disabled load no sklearn or
        numpy."""
        conf = classify_conf("enabled = false")
        code = ("import sys\nfrom gateway.cli import main\ntry:\n    main(sys.argv[1:])\n"
                "except SystemExit:\n    pass\n"
                "bad = [m for m in ('sklearn', 'numpy', 'scipy') if m in sys.modules]\n"
                "print('IMPORTED', bad)\n")
        out = subprocess.run([sys.executable, "-c", code, "-c", str(conf), *argv],
                             input=to_bytes(billing_mail(), "helpdesk@example.org"),
                             capture_output=True, cwd=REPO, timeout=120)
        assert b"IMPORTED []" in out.stdout, (out.stdout, out.stderr)


class TestHelpdesk:
    def test_decision_reaches_the_helpdesk(self, classify_conf, tmp_path,
                                           run_gateway: Callable[..., RunningGateway]):
        """With a helpdesk, the classifier's queue and priority travel like any decision,
        and its confidence as the configured dynamic field."""
        from tests.conftest import free_port
        from tests.peers.webhook import WebhookReceiver

        receiver = WebhookReceiver(secret="k3y", port=free_port()).start()
        try:
            conf = classify_conf(
                "enabled = true\nmin_confidence = 0.5\nmin_priority_confidence = 0.0\n"
                'confidence_field = "ClassifierConfidence"',
                extra=f'\n[helpdesk]\ntype = "webhook"\nurl = "{receiver.url}"\n'
                      'secret_file = "secrets/webhook"\npoll_interval = "0.2s"\n')
            (conf.parent / "secrets").mkdir()
            (conf.parent / "secrets" / "webhook").write_text("k3y\n")
            (conf.parent / "secrets" / "webhook").chmod(0o600)
            rg = run_gateway(load_config(conf))
            assert lmtp(rg, to_bytes(billing_mail(), "helpdesk@example.org")) == 250
            doc = receiver.wait_delivered(1)[0]
        finally:
            receiver.stop()
        t = newest_ticket(rg.gateway)
        assert doc["decisions"]["Queue"] == "Billing" == doc["ticket"]["queue"]
        assert doc["decisions"]["Priority"] == t.priority == t.classification["priority"]
        conf_value = doc["decisions"]["DynamicField-ClassifierConfidence"]
        assert conf_value == f"{t.classification['confidence']:.2f}"
        assert t.dynamic_fields == {"ClassifierConfidence": conf_value}


@pytest.mark.postgres
class TestPostgres:
    def test_train_and_move_on_postgresql(self, pg_url, tmp_path, capsys):
        """The training query, moves and the recorded decision work on PostgreSQL."""
        from tests.integration.classify.conftest import ADDRESS

        model = tmp_path / "model"
        conf = write_conf(tmp_path / "pg", model, database=pg_url)
        gw = Gateway(load_config(conf))
        mails = generate(200, seed=5)
        try:
            gw.prepare_store()
            numbers = deliver_all(gw, [(to_bytes(m, ADDRESS[m.queue]), ADDRESS[m.queue], "")
                                       for m in mails])
        finally:
            gw.close()
        assert cli_main(["-c", str(conf), "tickets", "move", numbers[0], "HR"]) == 0
        capsys.readouterr()
        assert cli_main(["-c", str(conf), "classify", "train", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["activated"] and out["model"]["moves"] == 1
        assert out["model"]["tickets"] == 200
        conf2 = write_conf(tmp_path / "pg2", model, "enabled = true\nmin_confidence = 0.3",
                           database=pg_url)
        gw = Gateway(load_config(conf2))
        try:
            deliver_all(gw, [(to_bytes(billing_mail(), "helpdesk@example.org"),
                              "helpdesk@example.org", "")])
            t = newest_ticket(gw)
        finally:
            gw.close()
        assert t.queue == "Billing" and t.classification["applied_queue"] is True

    def test_training_read_is_not_bound_by_the_statement_timeout(self, pg_url):
        """Reading every ticket for training may take longer than deskgate's statement
        timeout on a big store: that one read runs without it."""
        from sqlalchemy import text

        from gateway.classify.data import load_examples
        from gateway.store.db import make_engine, migrate

        eng = make_engine(pg_url)
        try:
            migrate(eng)
            with eng.connect() as conn:
                assert conn.execute(text("SHOW statement_timeout")).scalar() != "0"
                assert load_examples(conn) == []
                assert conn.execute(text("SHOW statement_timeout")).scalar() == "0"
                conn.rollback()
                assert conn.execute(text("SHOW statement_timeout")).scalar() != "0"
        finally:
            eng.dispose()
