"""A generated, labelled helpdesk mail corpus for the classifier tests and bench.

Four queues (Billing, Technical, Sales, HR) in English, German and some French,
with the vocabulary they really share (account, invoice, order, contract,
password, payment, licence), typos, greetings and signatures common to all,
replies that quote a mail of another topic, HTML-only mails, and a few per cent
of tickets filed by agents in a queue their words do not suggest. Priorities
follow urgency words loosely. Deterministic for a given seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

QUEUES = ("Billing", "Technical", "Sales", "HR")

TOPICS: dict[str, dict[str, list[str]]] = {
    "Billing": {
        "en_subject": ["Invoice {n} charged twice", "Question about invoice {n}",
                       "Refund for order {n}", "Wrong VAT on my invoice",
                       "Payment reminder received although paid", "Credit note for {n}",
                       "Direct debit failed", "Change billing address on my account",
                       "Overcharged this month", "Duplicate payment {n}"],
        "en_body": ["I was charged twice for invoice {n}, please refund the second payment.",
                    "The amount on the invoice does not match the price we agreed.",
                    "Your reminder says the invoice is overdue but we paid it on {d} by "
                    "bank transfer.",
                    "Please send a credit note, the VAT number on the invoice is wrong.",
                    "Our direct debit mandate changed, please use the new IBAN for "
                    "future payments.",
                    "Can you split the invoice between our two cost centres?",
                    "The payment of {a} EUR was taken from the credit card twice.",
                    "Please correct the billing address on the account, the invoice went "
                    "to the old office.",
                    "We need a copy of all invoices of last year for our accountant.",
                    "Why was the annual fee charged again after we cancelled the contract?"],
        "de_subject": ["Rechnung {n} doppelt abgebucht", "Frage zur Rechnung {n}",
                       "Gutschrift für Bestellung {n}", "Falsche Mehrwertsteuer",
                       "Mahnung trotz Zahlung", "Lastschrift fehlgeschlagen"],
        "de_body": ["Die Rechnung {n} wurde zweimal abgebucht, bitte erstatten Sie den "
                    "Betrag.",
                    "Wir haben die Rechnung am {d} überwiesen, trotzdem kam eine Mahnung.",
                    "Bitte stellen Sie eine Gutschrift aus, die Umsatzsteuer ist falsch.",
                    "Die Rechnungsadresse in unserem Konto ist veraltet.",
                    "Der Betrag von {a} EUR wurde doppelt von der Kreditkarte abgebucht.",
                    "Bitte senden Sie uns eine Kopie aller Rechnungen des letzten Jahres."],
        "fr_subject": ["Facture {n} payée deux fois", "Remboursement commande {n}"],
        "fr_body": ["La facture {n} a été débitée deux fois, merci de rembourser.",
                    "Nous avons payé la facture par virement le {d}, pourquoi ce rappel ?",
                    "Le montant de la facture ne correspond pas au devis."],
    },
    "Technical": {
        "en_subject": ["Cannot log in to my account", "Error 500 after update",
                       "Password reset link does not work", "Server down since this morning",
                       "VPN connection drops", "Printer not printing", "App crashes on start",
                       "Sync error {n}", "Email not arriving", "Two-factor code rejected",
                       "Licence key not accepted", "Slow dashboard"],
        "en_body": ["Since the update to version {v} the application shows error 500 when I "
                    "open a report.",
                    "I cannot log in, the password reset link in the mail says the token "
                    "expired.",
                    "Our server has been down since 7am, nobody can work, this is urgent.",
                    "The VPN client disconnects every few minutes with timeout error {n}.",
                    "The printer on the second floor shows a paper jam but there is none.",
                    "The mobile app crashes immediately after the splash screen on Android.",
                    "Synchronisation fails with error code {n}, the log says connection "
                    "refused.",
                    "The two-factor code from the authenticator is always rejected.",
                    "After entering the licence key the installer says it is invalid.",
                    "The dashboard takes more than a minute to load since yesterday.",
                    "Attached is a screenshot of the stack trace, the database seems "
                    "unreachable."],
        "de_subject": ["Anmeldung nicht möglich", "Fehler 500 nach dem Update",
                       "Server ausgefallen", "Passwort zurücksetzen funktioniert nicht",
                       "Drucker druckt nicht", "VPN bricht ab"],
        "de_body": ["Seit dem Update auf Version {v} erscheint beim Öffnen Fehler 500.",
                    "Ich kann mich nicht anmelden, der Link zum Zurücksetzen des Passworts "
                    "ist abgelaufen.",
                    "Der Server ist seit heute früh nicht erreichbar, dringend!",
                    "Die VPN-Verbindung bricht alle paar Minuten mit Zeitüberschreitung ab.",
                    "Die App stürzt nach dem Start sofort ab.",
                    "Die Synchronisation schlägt mit Fehlercode {n} fehl."],
        "fr_subject": ["Impossible de me connecter", "Erreur 500 après la mise à jour"],
        "fr_body": ["Depuis la mise à jour, l'application affiche une erreur 500.",
                    "Le lien de réinitialisation du mot de passe a expiré.",
                    "Le serveur est en panne depuis ce matin, c'est urgent."],
    },
    "Sales": {
        "en_subject": ["Request for quote", "Pricing for {u} users", "Upgrade to enterprise plan",
                       "Demo request", "Volume discount", "Quote {n} questions",
                       "Interested in your product", "Extend our licence",
                       "Partner programme", "Order {u} additional seats"],
        "en_body": ["We are interested in your software for about {u} users, could you send "
                    "a quote?",
                    "Is there a volume discount if we order more than {u} licences?",
                    "We would like to upgrade our account to the enterprise plan.",
                    "Could we schedule a demo next week with our IT manager?",
                    "Please send me an offer including installation and training.",
                    "What does the premium support package cost per year?",
                    "We want to extend our contract and add {u} seats, what is the price?",
                    "Our reseller asked about your partner programme and margins.",
                    "Can you include the invoice terms in the quote, we pay within 30 days?"],
        "de_subject": ["Angebot angefragt", "Preise für {u} Benutzer", "Upgrade auf Enterprise",
                       "Demo-Termin", "Mengenrabatt"],
        "de_body": ["Wir interessieren uns für Ihre Software für etwa {u} Benutzer, bitte "
                    "senden Sie uns ein Angebot.",
                    "Gibt es einen Mengenrabatt ab {u} Lizenzen?",
                    "Wir möchten unseren Vertrag verlängern und {u} Arbeitsplätze dazukaufen.",
                    "Können wir nächste Woche eine Vorführung vereinbaren?"],
        "fr_subject": ["Demande de devis", "Tarifs pour {u} utilisateurs"],
        "fr_body": ["Nous souhaitons un devis pour {u} utilisateurs.",
                    "Y a-t-il une remise pour un volume de licences important ?"],
    },
    "HR": {
        "en_subject": ["Application for the {j} position", "Question about my payslip",
                       "Holiday request", "Sick note", "Change of bank details for salary",
                       "Parental leave", "Job reference", "Working hours contract",
                       "Onboarding documents", "Training budget"],
        "en_body": ["Please find attached my application for the {j} position.",
                    "My payslip for {m} shows fewer hours than I worked.",
                    "I would like to request holiday from {d} for two weeks.",
                    "I am sick today, the doctor's note will follow.",
                    "Please pay my salary to my new bank account from next month.",
                    "I would like to discuss parental leave starting in {m}.",
                    "Could HR issue a job reference for my application elsewhere?",
                    "My employment contract says 40 hours but I work 35, please correct it.",
                    "The onboarding documents for the new colleague are missing the "
                    "signature page.",
                    "Is there budget left for the training course I applied for?"],
        "de_subject": ["Bewerbung als {j}", "Frage zur Gehaltsabrechnung", "Urlaubsantrag",
                       "Krankmeldung", "Elternzeit"],
        "de_body": ["Anbei meine Bewerbung als {j}.",
                    "Meine Gehaltsabrechnung für {m} enthält zu wenige Stunden.",
                    "Ich beantrage Urlaub ab dem {d} für zwei Wochen.",
                    "Ich bin heute krank, die Arbeitsunfähigkeitsbescheinigung folgt.",
                    "Bitte überweisen Sie mein Gehalt ab nächstem Monat auf mein neues "
                    "Konto."],
        "fr_subject": ["Candidature au poste de {j}", "Demande de congés"],
        "fr_body": ["Veuillez trouver ci-joint ma candidature au poste de {j}.",
                    "Je souhaite poser des congés à partir du {d}."],
    },
}

# Sentences every queue's mail may contain (the shared vocabulary).
SHARED = {
    "en": ["Please let me know as soon as possible.", "Thanks in advance for your help.",
           "My customer number is {n}.", "I already called yesterday but nobody answered.",
           "This concerns our account {n}.", "Our contract number is {n}.",
           "Please reply to this address.", "We have been customers for years."],
    "de": ["Bitte melden Sie sich so bald wie möglich.", "Vielen Dank im Voraus.",
           "Meine Kundennummer ist {n}.", "Es geht um unser Konto {n}.",
           "Unsere Vertragsnummer lautet {n}."],
    "fr": ["Merci d'avance pour votre aide.", "Mon numéro client est {n}."],
}
GREETING = {"en": ["Hello,", "Hi team,", "Dear Sir or Madam,", "Good morning,", ""],
            "de": ["Hallo,", "Sehr geehrte Damen und Herren,", "Guten Tag,", ""],
            "fr": ["Bonjour,", "Madame, Monsieur,", ""]}
CLOSING = {"en": ["Best regards", "Kind regards", "Thanks", "Cheers"],
           "de": ["Mit freundlichen Grüßen", "Viele Grüße", "Beste Grüße"],
           "fr": ["Cordialement", "Bien à vous"]}
QUOTE_HEAD = {"en": "On {date}, {who} wrote:", "de": "Am {date} schrieb {who}:",
              "fr": "Le {date}, {who} a écrit :"}
NAMES = ["Anna Schmidt", "John Miller", "Marie Dubois", "Peter Weber", "Laura Rossi",
         "Tom Becker", "Sofia Novak", "Lucas Martin", "Emma Wilson", "Jonas Fischer"]
COMPANIES = ["Acme GmbH", "Globex Ltd", "Initech", "Umbrella SARL", "Hooli Inc",
             "Stark Logistik", "Wayne Retail"]
JOBS = ["developer", "accountant", "sales manager", "support engineer", "designer"]
MONTHS = ["January", "March", "May", "September", "November"]
URGENT = {"en": ["URGENT: ", "urgent - "], "de": ["DRINGEND: ", "Eilt: "], "fr": ["URGENT : "]}
LANG_WEIGHTS = (("en", 0.6), ("de", 0.3), ("fr", 0.1))


@dataclass
class Mail:
    subject: str
    body: str
    queue: str
    priority: str
    lang: str
    sender: str
    html: bool = False


def _fill(rng: random.Random, text: str) -> str:
    return text.format(n=rng.randint(10000, 99999),
                       d=f"{rng.randint(1, 28)}.{rng.randint(1, 12)}.",
                       a=f"{rng.randint(20, 4000)},{rng.randint(0, 99):02d}",
                       v=f"{rng.randint(2, 9)}.{rng.randint(0, 20)}",
                       u=rng.choice([5, 20, 50, 250]), j=rng.choice(JOBS), m=rng.choice(MONTHS))


def _typos(rng: random.Random, text: str, rate: float) -> str:
    """Swap, drop or double letters in some words."""
    words = text.split(" ")
    for i, w in enumerate(words):
        if len(w) > 3 and rng.random() < rate:
            k = rng.randrange(1, len(w) - 1)
            op = rng.randrange(3)
            if op == 0:
                w = w[:k - 1] + w[k] + w[k - 1] + w[k + 1:]
            elif op == 1:
                w = w[:k] + w[k + 1:]
            else:
                w = w[:k] + w[k] + w[k:]
            words[i] = w
    return " ".join(words)


def _lang(rng: random.Random) -> str:
    r, acc = rng.random(), 0.0
    for lang, w in LANG_WEIGHTS:
        acc += w
        if r < acc:
            return lang
    return "en"


def _priority(rng: random.Random, queue: str, urgent: bool) -> str:
    if urgent:
        return rng.choices(["5 very high", "4 high", "3 normal"], [0.4, 0.5, 0.1])[0]
    if queue == "Technical":
        return rng.choices(["4 high", "3 normal"], [0.25, 0.75])[0]
    if queue == "Sales":
        return rng.choices(["3 normal", "2 low"], [0.7, 0.3])[0]
    return rng.choices(["3 normal", "4 high", "2 low"], [0.85, 0.05, 0.1])[0]


def make_mail(rng: random.Random, queue: str, *, mislabel: float = 0.04) -> Mail:
    lang = _lang(rng)
    topic = TOPICS[queue]
    subject = _fill(rng, rng.choice(topic[f"{lang}_subject"]))
    sentences = rng.sample(topic[f"{lang}_body"], k=min(len(topic[f"{lang}_body"]),
                                                         rng.randint(1, 3)))
    if rng.random() < 0.6:
        sentences.insert(rng.randrange(len(sentences) + 1), rng.choice(SHARED[lang]))
    urgent = rng.random() < 0.15
    if urgent:
        subject = rng.choice(URGENT[lang]) + subject
    name = rng.choice(NAMES)
    company = rng.choice(COMPANIES)
    lines = [rng.choice(GREETING[lang]), ""] if rng.random() < 0.8 else []
    lines.append(_typos(rng, " ".join(_fill(rng, s) for s in sentences), 0.06))
    lines += ["", rng.choice(CLOSING[lang]), name]
    if rng.random() < 0.5:
        lines += ["-- ", f"{name} | {company}", f"Tel. +49 30 {rng.randint(1000000, 9999999)}",
                  "Please consider the environment before printing this e-mail."]
    if rng.random() < 0.25:         # a reply quoting a mail about something else
        other = rng.choice([q for q in QUEUES if q != queue])
        quoted = _fill(rng, rng.choice(TOPICS[other][f"{lang}_body"]))
        subject = "Re: " + subject
        lines += ["", QUOTE_HEAD[lang].format(date="Mon, 3 Nov 2026 10:12", who=name),
                  f"> {quoted}", "> " + _fill(rng, rng.choice(SHARED[lang]))]
    label = queue
    if rng.random() < mislabel:     # agents do not always agree with the words
        label = rng.choice([q for q in QUEUES if q != queue])
    sender = f"{name.split()[0].lower()}.{rng.randint(1, 999)}@{company.split()[0].lower()}.test"
    return Mail(subject=subject, body="\n".join(lines), queue=label,
                priority=_priority(rng, label, urgent), lang=lang, sender=sender,
                html=rng.random() < 0.1)


def generate(n: int, seed: int = 15, weights: tuple[float, ...] = (0.3, 0.35, 0.2, 0.15),
             mislabel: float = 0.04) -> list[Mail]:
    """n mails; queue shares by `weights` (Technical the largest, as in real helpdesks)."""
    rng = random.Random(seed)
    return [make_mail(rng, rng.choices(QUEUES, weights)[0], mislabel=mislabel)
            for _ in range(n)]


def to_bytes(mail: Mail, to: str, *, when: datetime | None = None) -> bytes:
    """The mail as an RFC 5322 message (HTML-only for some)."""
    msg = EmailMessage()
    msg["From"] = mail.sender
    msg["To"] = to
    msg["Subject"] = mail.subject
    msg["Message-ID"] = make_msgid(domain="corpus.test")
    msg["Date"] = format_datetime(when or datetime.now(UTC) - timedelta(minutes=5))
    if mail.html:
        html = "".join(f"<p>{line}</p>" if line else "<br>" for line in mail.body.split("\n"))
        msg.set_content(f"<html><body>{html}</body></html>", subtype="html")
    else:
        msg.set_content(mail.body)
    return bytes(msg)
