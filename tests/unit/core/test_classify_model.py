"""The classifier's model files, text normalisation, configuration and offload rule."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gateway.classify.data import Example
from gateway.classify.meta import ModelError
from gateway.classify.model import load, save, train
from gateway.classify.text import customer_text, message_text
from gateway.config import load_config
from gateway.errors import ConfigErrors

MARKER = Path("/tmp/deskgate-classify-pickle-ran")


class Boom:
    """Unpickling this runs code (it would create MARKER)."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


def trained_small():
    words = {"Billing": "invoice refund payment charged twice credit note",
             "Technical": "error login password server crash reset timeout",
             "Sales": "quote price discount offer demo licence seats"}
    ex = [Example(f"{w.split()[i % 6]} {w.split()[(i + 2) % 6]} case {i}", q,
                  "3 normal" if i % 3 else "4 high")
          for q, w in words.items() for i in range(12)]
    return train(ex, min_per_class=5)


def small_model(tmp_path: Path) -> Path:
    save(trained_small(), tmp_path / "m")
    return tmp_path / "m"


def rewrite_arrays(directory: Path, arrays: dict[str, object], *, pickle_ok: bool) -> None:
    """Replace the model's .npz and fix the SHA-256 in model.json (an attacker's file)."""
    meta = json.loads((directory / "model.json").read_text())
    path = directory / meta["file"]
    np.savez(path.open("wb"), allow_pickle=pickle_ok, **arrays)   # type: ignore[arg-type]
    meta["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (directory / "model.json").write_text(json.dumps(meta))


class TestModelFiles:
    def test_round_trip(self, tmp_path):
        """A saved model loads back and predicts the same."""
        model = trained_small()
        d = tmp_path / "m"
        save(model, d)
        m = load(d)
        for text in ("please refund the invoice charged twice", "server crash after login",
                     "a quote for ten seats", "unrelated words entirely"):
            assert m.predict(text) == model.predict(text)      # as before it was saved
        p = m.predict("please refund the invoice charged twice")
        assert p["queue"] == "Billing" and 0 < p["confidence"] <= 1
        assert p["runner_up"] in ("Sales", "Technical")
        assert m.meta["queue"]["classes"] == ["Billing", "Sales", "Technical"]
        assert list(d.glob("*.npz")) == [d / m.meta["file"]]

    def test_pickle_bearing_file_is_refused_without_running_it(self, tmp_path):
        """An .npz whose array is a pickled object is refused; the pickle never runs."""
        MARKER.unlink(missing_ok=True)
        d = small_model(tmp_path)
        good = load(d)
        obj = np.empty(1, dtype=object)
        obj[0] = Boom()
        rewrite_arrays(d, {"idf": obj, "queue_coef": good.queue.coef,
                           "queue_intercept": good.queue.intercept}, pickle_ok=True)
        with pytest.raises(ModelError, match="refused"):
            load(d)
        assert not MARKER.exists()

    def test_plain_pickle_instead_of_archive_is_refused(self, tmp_path):
        """A pickle file in place of the archive is not a model archive."""
        import pickle

        MARKER.unlink(missing_ok=True)
        d = small_model(tmp_path)
        meta = json.loads((d / "model.json").read_text())
        path = d / meta["file"]
        path.write_bytes(pickle.dumps(Boom()))
        meta["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        (d / "model.json").write_text(json.dumps(meta))
        with pytest.raises(ModelError):
            load(d)
        assert not MARKER.exists()

    def test_replaced_archive_is_refused(self, tmp_path):
        """An archive that is not the one model.json records (SHA-256) is refused."""
        d = small_model(tmp_path)
        meta = json.loads((d / "model.json").read_text())
        with zipfile.ZipFile(d / meta["file"], "a") as z:
            z.writestr("extra.npy", b"x")
        with pytest.raises(ModelError, match="SHA-256"):
            load(d)

    def test_wrong_shapes_are_refused(self, tmp_path):
        """Arrays that do not fit the classes and features are refused."""
        d = small_model(tmp_path)
        good = load(d)
        rewrite_arrays(d, {"idf": good.featurizer.idf, "queue_coef": good.queue.coef[:2],
                           "queue_intercept": good.queue.intercept,
                           "priority_coef": good.priority.coef,     # type: ignore[union-attr]
                           "priority_intercept": good.priority.intercept},  # type: ignore[union-attr]
                       pickle_ok=False)
        with pytest.raises(ModelError, match="do not match"):
            load(d)

    def test_missing_and_foreign_metadata(self, tmp_path):
        """No model.json, or one of another format, is a ModelError naming the problem."""
        with pytest.raises(ModelError, match="missing"):
            load(tmp_path)
        (tmp_path / "model.json").write_text('{"format": 99}')
        with pytest.raises(ModelError, match="not a deskgate classifier model"):
            load(tmp_path)

    def test_too_few_queues_to_learn(self):
        """Training needs two queues with min_per_class tickets each."""
        ex = [Example("invoice", "Billing", "3 normal")] * 30 + \
             [Example("error", "Technical", "3 normal")] * 3
        with pytest.raises(ModelError, match="at least two queues"):
            train(ex, min_per_class=5)


class TestText:
    def test_quoted_reply_and_signature_are_cut(self):
        """Quoted lines, the reply header and what follows, and signatures are dropped."""
        body = ("Hello,\nplease refund invoice 1.\n\nOn Mon, 3 Nov 2026, Bob wrote:\n"
                "> the server is down\n> error 500\n")
        assert customer_text(body) == "Hello,\nplease refund invoice 1."
        assert customer_text("Need a quote.\n-- \nJohn | Sales Ltd\nTel 1") == "Need a quote."
        assert customer_text("Bitte erstatten.\n\nMit freundlichen Grüßen\nAnna") == \
            "Bitte erstatten."
        assert customer_text("Merci.\nLe 3 nov. 2026, Marie a écrit :\n> texte") == "Merci."
        assert customer_text("Text\n-----Original Message-----\nFrom: x\nold") == "Text"

    def test_subject_prefixes_and_html(self):
        """Re:/AW:/Fwd: are removed from the subject; an HTML-only body becomes text."""
        t = message_text("AW: Re: Rechnung 5", "", "<p>Bitte <b>erstatten</b></p>")
        assert t == "Rechnung 5\nBitte erstatten"


class TestConfig:
    def test_ranges_are_checked(self, make_confdir):
        """Out-of-range classifier keys are configuration errors naming the key."""
        conf = make_confdir({"50-c.toml": """
            [classifier]
            min_confidence = 1.5
            min_per_class = 1
            confidence_field = "bad name"
            retrain_interval = "1d"
        """})
        with pytest.raises(ConfigErrors) as exc:
            load_config(conf)
        keys = {e.key for e in exc.value.errors}
        assert keys == {"classifier.min_confidence", "classifier.min_per_class",
                        "classifier.confidence_field"}


    def test_model_directory_defaults_to_the_state_dir(self, make_confdir):
        """Without [classifier] model the model lives in <state_dir>/classifier; a relative
        model path is relative to the parent of conf.d."""
        from gateway.classify import model_dir

        cfg = load_config(make_confdir({"50-c.toml": '[gateway]\nstate_dir = "/srv/dg"\n'}))
        assert model_dir(cfg) == Path("/srv/dg/classifier")
        cfg = load_config(make_confdir({"50-c.toml": '[classifier]\nmodel = "models/x"\n'}))
        assert model_dir(cfg) == cfg.root / "models" / "x"


class TestOffload:
    def test_messages_that_may_be_classified_go_to_the_worker_pool(self, make_confdir):
        """With the classifier enabled, mail for the catch-all or an unknown recipient is
        prepared on the worker pool; mail for another queue's address is not; with the
        classifier disabled nothing changes."""
        from gateway.inbound import pipeline
        from gateway.inbound.stages import build_stages
        from gateway.model import Envelope
        from gateway.runtime import build_runtime

        offload = build_stages().offload

        def needs_worker(e: Envelope) -> bool:
            return pipeline.needs_worker(e, offload)

        def env(rcpt: str) -> Envelope:
            return Envelope(mail_from="", recipients=(rcpt,), raw=b"Subject: x\r\n\r\nx\r\n")

        build_runtime(load_config(make_confdir({"50-c.toml": "[classifier]\nenabled = true\n"})))
        assert needs_worker(env("helpdesk@example.org"))
        assert needs_worker(env("someone@else.test"))
        assert not needs_worker(env("support@example.org"))
        build_runtime(load_config(make_confdir({"50-c.toml": "[classifier]\n"})))
        assert not needs_worker(env("helpdesk@example.org"))


class TestFeatures:
    def test_single_message_path_matches_the_batch_features(self, tmp_path):
        """The per-message features used at delivery equal the training features."""
        m = load(small_model(tmp_path))
        for text in ("refund invoice 12 charged twice", "Server down!\nerror 500 äöü",
                     "", "x"):
            row = m.featurizer.transform([text])
            idx, val = m.featurizer.one(text)
            got = dict(zip(idx.tolist(), val.tolist(), strict=True))
            want = dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))
            assert got.keys() == want.keys()
            assert all(abs(got[k] - want[k]) < 1e-5 for k in want)
