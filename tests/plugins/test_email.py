"""The email sink against a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import email
import email.policy
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pydantic
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from flowforged import logs
from flowforged.errors import PermanentSinkError, SinkError
from flowforged.plugin import Notification, SinkContext
from flowforged.secrets import SecretContext
from flowforged_plugins.sinks import email as email_sink
from flowforged_plugins.sinks.email import EmailSink

SMTP_PASSWORD = "s3cret-smtp-pass-91c2"
# A relay on localhost may take a login without TLS; aiosmtpd warns about it, rightly in general.
PLAIN_AUTH = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

BROKEN = Notification(
    id=42,
    sink="oncall",
    transition="broken",
    source="github",
    pipeline="octo-org/octo-repo/.github/workflows/test.yml",
    branch="main",
    run_id="9876543210",
    attempt=1,
    url="https://github.com/octo-org/octo-repo/actions/runs/9876543210",
    sha="3484a3fb816e0859fd6e1cea078d76385ff50625",
    commit_message="Bump <redis> & retry flaky tests\n\nSigned-off-by: Mona Lisa",
    author="monalisa",
    duration_seconds=252.0,
    failed_jobs=("test (ubuntu-latest, 3.11)", "lint"),
    pipeline_name="Tests",
    finished_at="2024-05-01T10:04:12Z",
)


@dataclasses.dataclass
class Delivered:
    sender: str
    recipients: list[str]
    message: EmailMessage
    tls: bool
    login: bytes | None


class Mailbox:
    """An aiosmtpd handler that keeps what it accepts and refuses the recipients it is told to."""

    def __init__(self, refuse: dict[str, str] | None = None, data_reply: str = "250 Message accepted"):
        self.refuse = refuse or {}
        self.data_reply = data_reply
        self.delivered: list[Delivered] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply.startswith("250"):
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            # session.ssl is set by STARTTLS only; the transport knows about implicit TLS too.
            tls = session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None
            self.delivered.append(
                Delivered(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    message,
                    tls,
                    getattr(session.auth_data, "login", None),
                )
            )
        return self.data_reply


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"ci",
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


@pytest.fixture
def smtp() -> Iterator[Callable[..., int]]:
    """Start an aiosmtpd server with a Mailbox and these SMTP options; returns its port."""
    controllers: list[Controller] = []

    def start(mailbox: Mailbox, **options: Any) -> int:
        port = free_port()
        controller = Controller(mailbox, hostname="127.0.0.1", port=port, **options)
        controller.start()
        controllers.append(controller)
        return port

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def context() -> SinkContext:
    return SinkContext(http=None, log=logs.get("flowforged.sinks"))


def make_sink(port: int, **config: Any) -> EmailSink:
    data = {
        "type": "email",
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "from": "FlowForge <ci@example.com>",
        "to": ["oncall@example.com"],
        "timeout": "5s",
    } | config
    secrets = SecretContext(environ={"FLOWFORGED_SECRET_SMTP_PASSWORD": SMTP_PASSWORD}, use_keyring=False)
    return EmailSink("oncall", EmailSink.config_model.model_validate(data, context={"secrets": secrets}))


def parts(message: EmailMessage) -> dict[str, str]:
    return {part.get_content_type(): part.get_content().replace("\r\n", "\n") for part in message.iter_parts()}


# --- sending ------------------------------------------------------------------------------------


async def test_every_recipient_gets_a_text_and_an_html_part(smtp, context) -> None:
    mailbox = Mailbox()
    port = smtp(mailbox)
    sink = make_sink(port, to=["oncall@example.com", "Team Lead <lead@example.com>"])
    answer = await sink.send(BROKEN, context)

    assert answer.startswith("accepted by 127.0.0.1 for 2 recipient(s)")
    [mail] = mailbox.delivered
    assert mail.sender == "ci@example.com"
    assert mail.recipients == ["oncall@example.com", "lead@example.com"]
    message = mail.message
    assert message["Subject"] == "[FlowForge] BROKEN octo-org/octo-repo test.yml on main (3484a3f)"
    assert message["From"] == "FlowForge <ci@example.com>"
    assert message["To"] == "oncall@example.com, Team Lead <lead@example.com>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "multipart/alternative"
    body = parts(message)
    assert set(body) == {"text/plain", "text/html"}
    text, html = body["text/plain"], body["text/html"]
    assert "Broken: Tests" in text
    assert "Commit:    3484a3f Bump <redis> & retry flaky tests" in text
    assert "Duration:  4m 12s" in text
    assert "  - test (ubuntu-latest, 3.11)\n  - lint" in text
    assert "Link:      https://github.com/octo-org/octo-repo/actions/runs/9876543210" in text
    assert '<a href="https://github.com/octo-org/octo-repo/actions/runs/9876543210">Tests</a>' in html
    assert "3484a3f Bump &lt;redis&gt; &amp; retry flaky tests" in html
    assert "<li>lint</li>" in html


@PLAIN_AUTH
async def test_login_with_the_password_from_a_secret(smtp, context) -> None:
    mailbox = Mailbox()
    port = smtp(mailbox, authenticator=authenticate, auth_require_tls=False, auth_required=True)
    sink = make_sink(port, username="ci", password={"secret": "smtp-password"})
    await sink.send(BROKEN, context)
    [mail] = mailbox.delivered
    assert mail.login == b"ci"


@PLAIN_AUTH
async def test_a_wrong_password_is_permanent_and_not_repeated(smtp, context) -> None:
    port = smtp(Mailbox(), authenticator=authenticate, auth_require_tls=False, auth_required=True)
    sink = make_sink(port, username="ci", password="not-the-password-3e1")
    with pytest.raises(PermanentSinkError, match="refused the login of 'ci': 535") as caught:
        await sink.send(BROKEN, context)
    assert "not-the-password-3e1" not in str(caught.value)


async def test_a_recipient_refused_with_550_is_permanent(smtp, context) -> None:
    port = smtp(Mailbox(refuse={"oncall@example.com": "550 5.1.1 No such user here"}))
    with pytest.raises(PermanentSinkError, match="oncall@example.com: 550 5.1.1 No such user here"):
        await make_sink(port).send(BROKEN, context)


async def test_a_recipient_deferred_with_451_is_retried(smtp, context) -> None:
    mailbox = Mailbox(refuse={"oncall@example.com": "451 4.3.0 Mailbox busy, try again later"})
    port = smtp(mailbox)
    with pytest.raises(SinkError, match="451 4.3.0") as caught:
        await make_sink(port).send(BROKEN, context)
    assert not isinstance(caught.value, PermanentSinkError)
    assert mailbox.delivered == []


async def test_a_message_refused_at_data_is_permanent(smtp, context) -> None:
    port = smtp(Mailbox(data_reply="554 5.7.1 Message rejected as spam"))
    with pytest.raises(PermanentSinkError, match="554 5.7.1 Message rejected as spam"):
        await make_sink(port).send(BROKEN, context)


async def test_one_refused_recipient_does_not_resend_to_the_others(smtp, context) -> None:
    mailbox = Mailbox(refuse={"gone@example.com": "550 5.1.1 No such user here"})
    port = smtp(mailbox)
    sink = make_sink(port, to=["oncall@example.com", "gone@example.com"])
    answer = await sink.send(BROKEN, context)
    assert answer == "sent to 1 of 2 recipients; refused: gone@example.com (550 5.1.1 No such user here)"
    assert [mail.recipients for mail in mailbox.delivered] == [["oncall@example.com"]]


async def test_starttls_required_but_not_offered_is_permanent(smtp, context) -> None:
    port = smtp(Mailbox())
    with pytest.raises(PermanentSinkError, match="STARTTLS"):
        await make_sink(port, tls="starttls").send(BROKEN, context)


async def test_a_server_that_is_down_is_retried(context) -> None:
    with pytest.raises(SinkError) as caught:
        await make_sink(free_port()).send(BROKEN, context)
    assert not isinstance(caught.value, PermanentSinkError)
    assert "cannot send through 127.0.0.1" in str(caught.value)


async def test_a_server_that_never_greets_times_out(context) -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SinkError, match="timed out") as caught:
            await make_sink(port, timeout="300ms").send(BROKEN, context)
        assert not isinstance(caught.value, PermanentSinkError)
    finally:
        release.set()
        server.close()
        await server.wait_closed()


# --- TLS, with a certificate made for the test --------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: its file for the sink's ca_file, a server context."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FlowForge test SMTP")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return cert_file, server


async def test_starttls_then_login(smtp, context, certificate) -> None:
    cert_file, server_tls = certificate
    mailbox = Mailbox()
    port = smtp(mailbox, tls_context=server_tls, require_starttls=True, authenticator=authenticate, auth_required=True)
    sink = make_sink(port, tls="starttls", ca_file=str(cert_file), username="ci", password={"secret": "smtp-password"})
    await sink.send(BROKEN, context)
    [mail] = mailbox.delivered
    assert mail.tls and mail.login == b"ci"


async def test_implicit_tls(smtp, context, certificate) -> None:
    cert_file, server_tls = certificate
    mailbox = Mailbox()
    port = smtp(mailbox, ssl_context=server_tls)
    await make_sink(port, tls="implicit", ca_file=str(cert_file)).send(BROKEN, context)
    assert mailbox.delivered[0].tls


async def test_an_untrusted_certificate_is_not_accepted(smtp, context, certificate) -> None:
    _, server_tls = certificate
    mailbox = Mailbox()
    port = smtp(mailbox, tls_context=server_tls, require_starttls=True)
    with pytest.raises(SinkError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed") as caught:
        await make_sink(port, tls="starttls").send(BROKEN, context)
    assert caught.value.__class__ is SinkError
    assert mailbox.delivered == []


# --- configuration ------------------------------------------------------------------------------


def config(**changes: Any) -> Any:
    data = {
        "type": "email",
        "host": "smtp.example.com",
        "from": "ci@example.com",
        "to": ["oncall@example.com"],
    } | changes
    return EmailSink.config_model.model_validate(data)


def test_defaults_are_submission_with_starttls() -> None:
    assert (config().smtp_port, config().tls, config().timeout) == (587, "starttls", 30.0)
    assert config(tls="implicit").smtp_port == 465
    assert config(port=2525).smtp_port == 2525
    assert config().from_ == "ci@example.com"


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"to": []}, "to"),
        ({"to": ["not an address"]}, "to"),
        ({"from": "ci"}, "from"),
        ({"tls": "ssl"}, "tls"),
        ({"starttls": True}, "starttls"),
        ({"timeout": "soon"}, "timeout"),
    ],
)
def test_mistakes_are_reported_by_key(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        config(**changes)
    assert [error["loc"][0] for error in caught.value.errors()] == [key]


def test_a_username_without_a_password_is_a_problem() -> None:
    assert config(username="ci").problems() == [("password", "missing (username is set)")]
    assert config(username="ci", password="x" * 8).problems() == []


# --- rendering (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transition", "subject"),
    [
        ("broken", "[FlowForge] BROKEN octo-org/octo-repo test.yml on main (3484a3f)"),
        ("still_failing", "[FlowForge] STILL FAILING octo-org/octo-repo test.yml on main (3484a3f)"),
        ("fixed", "[FlowForge] FIXED octo-org/octo-repo test.yml on main (3484a3f)"),
    ],
)
def test_subjects_read_well_in_an_inbox(transition: str, subject: str) -> None:
    assert email_sink.subject(dataclasses.replace(BROKEN, transition=transition)) == subject


def test_a_gitlab_project_and_a_group_read_well_too() -> None:
    grouped = dataclasses.replace(
        BROKEN,
        pipeline="gitlab-org/gitlab-test",
        branch="master",
        others=({"pipeline": "gitlab-org/gitlab-docs", "transition": "broken"},),
    )
    assert email_sink.subject(grouped) == "[FlowForge] BROKEN gitlab-org/gitlab-test on master (3484a3f) and 1 more"
    text = email_sink.text_body(grouped)
    assert "Other pipelines of this commit:" in text and "gitlab-org/gitlab-docs" in text


def test_a_retry_is_the_same_message_for_mail_clients() -> None:
    first = email_sink.render(BROKEN, "ci@example.com", ["oncall@example.com"], now=1714557852)
    again = email_sink.render(BROKEN, "ci@example.com", ["oncall@example.com"], now=1714557912)
    other = email_sink.render(dataclasses.replace(BROKEN, id=43), "ci@example.com", ["oncall@example.com"])
    assert first["Message-ID"] == again["Message-ID"] != other["Message-ID"]
    assert first["Message-ID"].endswith("@example.com>")


def echoing(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    """A server that quotes what it was sent in its refusal, as some misconfigured relays do."""
    password = auth_data.password.decode() if isinstance(auth_data, LoginPassword) else "?"
    return AuthResult(success=False, handled=False, message=f"535 5.7.8 no user with password {password}")


@PLAIN_AUTH
async def test_a_server_that_quotes_the_password_does_not_get_it_stored(smtp, context) -> None:
    port = smtp(Mailbox(), authenticator=echoing, auth_require_tls=False, auth_required=True)
    sink = make_sink(port, username="ci", password={"secret": "smtp-password"})
    with pytest.raises(PermanentSinkError, match="no user with password") as caught:
        await sink.send(BROKEN, context)
    assert SMTP_PASSWORD not in str(caught.value)
