"""Lesson 13, secrets over SDS: listener_0 speaks TLS with a certificate the control plane sends as
an SDS secret, and the certificate rotates live, without a restart or a failed request."""

from __future__ import annotations

import itertools
from typing import Any

from ...envoy import EnvoyAdmin
from ...i18n import N_, _
from ...envoy.config_dump import certificate_rows
from ...lab.traffic import send, server_certificate
from ...xds.builders import SANDBOX_CLUSTER, SANDBOX_LISTENER, SANDBOX_ROUTE, http_listener, route_configuration
from ...xds.resource_types import SECRET
from ..exercises import Exercise, Fail, Target
from .checks import push, resource, sandbox_cluster
from .live import no_failures, under_traffic, wait_until

__all__ = ["EXERCISES", "SECRET_NAME", "https_listener", "https_url", "serve_tls"]

DOCS = "https://www.envoyproxy.io/docs/envoy/v1.40.0"
SECRET_NAME = "server_cert"
_RUNS = itertools.count(1)
#: Per lab, the serials this lesson's rotation check rotated to (a check cell run again passes).
_ROTATED: dict[int, set[str]] = {}

GIVEN = '''\
from labxds.tls import issue, make_ca

ca = make_ca("lesson 13 CA")
names = {"dns_names": ["localhost", "proxy"], "ip_addresses": ["127.0.0.1"]}
first = issue(ca, "listener_0", server=True, **names)
'''


def https_url(lab: Any) -> str:
    return f"https://{lab.mode.envoy_host}:{lab.listener_port}"


def https_listener(lab: Any) -> Any:
    """listener_0 speaking TLS with the certificate of the SDS secret server_cert."""
    return http_listener(SANDBOX_LISTENER, lab.listener_port, SANDBOX_ROUTE, address=lab.mode.listen_host,
                         tls_secret=SECRET_NAME)  # fmt: skip


def serve_tls(lab: Any, secret: Any, *, timeout: float = 5.0) -> None:
    """Push the sandbox with listener_0 on TLS with ``secret``; return once it presents it (where
    exercise 13.2 starts)."""
    from ...xds.builders import cluster
    from ...xds.snapshot import Snapshot

    lab.push(Snapshot([cluster(SANDBOX_CLUSTER, [lab.upstream("service1")], type="LOGICAL_DNS"),
                       route_configuration(SANDBOX_ROUTE, SANDBOX_CLUSTER), https_listener(lab), secret]),
             timeout=timeout)  # fmt: skip
    serial = _serial_of(secret)
    if not wait_until(lambda: _serial_at(https_url(lab)) == serial, timeout):
        raise TimeoutError(f"listener_0 did not present the certificate {serial} within {timeout:g} s")


def _serial_at(url: str) -> str | None:
    try:
        return server_certificate(url)["serial"]
    except OSError:
        return None


def _resources(t: Target, secret: Any) -> list[Any]:
    return [sandbox_cluster(t), route_configuration(SANDBOX_ROUTE, SANDBOX_CLUSTER), https_listener(t.own_lab()),
            secret]  # fmt: skip


def _secret(answer: Any, name: str, hint: str) -> Any:
    secret = resource(answer, SECRET, name, hint)
    if not secret.HasField("tls_certificate"):
        raise Fail(_("{name} holds no certificate and key (tls_certificate)").format(name=name), hint)
    if secret.name != SECRET_NAME:
        raise Fail(_("your secret is named '{name}'").format(name=secret.name),
                   _("listener_0 asks SDS for the secret '{secret}': give yours that name").format(secret=SECRET_NAME))
    return secret


def _serial_of(secret: Any) -> str:
    """The serial of the certificate in a secret, as Envoy's /certs prints it."""
    from cryptography import x509

    pem = secret.tls_certificate.certificate_chain.inline_string or secret.tls_certificate.certificate_chain.inline_bytes
    if isinstance(pem, str):
        pem = pem.encode()
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise Fail(_("the secret's certificate_chain is not a PEM certificate"),
                   _("use the certificate's PEM text: cert.cert_pem")) from None
    text = format(cert.serial_number, "x")
    return text.zfill(len(text) + len(text) % 2)


def _presented(t: Target) -> str | None:
    """The serial listener_0 presents to a new connection (None: no TLS there yet)."""
    return _serial_at(https_url(t.own_lab()))


def _envoy_serials(t: Target) -> list[str]:
    with EnvoyAdmin(t.admin_url) as admin:
        return [str(r["serial"]) for r in certificate_rows(admin) if r["kind"] == "certificate"]


# -- 13.1 ---------------------------------------------------------------------------------------

#: Hints in code, with the words around it in the learner's language (translated where used).
_SECRET_HINT = N_('the certificate and its key in a secret named server_cert: '
                  'secret = labxds.tls_secret("server_cert", first.cert_pem, first.key_pem)')


def _check_secret(t: Target, secret: Any) -> str:
    sds = _secret(secret, "secret", _(_SECRET_HINT))
    serial = _serial_of(sds)
    push(t, _resources(t, sds), version=f"tls-{next(_RUNS)}", what=_("your secret"))
    if not wait_until(lambda: _presented(t) == serial, 3.0):
        raise Fail(_("3 s after your push listener_0 does not present your certificate (serial {serial})").format(
            serial=serial),
            _("Envoy accepted the secret but the listener does not use it yet: is the key the one of the "
              "certificate (first.key_pem with first.cert_pem)?"))  # fmt: skip
    lab = t.own_lab()
    answer = send(https_url(lab), 1, verify=False)[0]
    if answer["served_by"] != "service1":
        raise Fail(_("HTTPS through listener_0 answered {answer}").format(answer=answer["status"] or answer["error"]),
                   _("the TLS part works; the request should still reach service1"))
    return _("listener_0 speaks TLS with your certificate (serial {serial}, from Envoy's /certs); HTTPS requests "
             "reach service1").format(serial=serial)


# -- 13.2 ---------------------------------------------------------------------------------------

_ROTATE_HINT = N_('a new certificate from ca, in the secret of the same name: '
                  'second = issue(ca, "listener_0", server=True, **names); '
                  'rotated = labxds.tls_secret("server_cert", second.cert_pem, second.key_pem)')


def _check_rotation(t: Target, rotated: Any) -> str:
    sds = _secret(rotated, "rotated", _(_ROTATE_HINT))
    new = _serial_of(sds)
    lab = t.own_lab()
    before = _presented(t)
    if before is None:
        # No TLS listener yet (13.1 not done in this lab): start from a certificate of our own.
        from ...tls import issue, make_ca
        from ...xds.builders import tls_secret

        own = issue(make_ca("lesson 13 check"), "listener_0", server=True, dns_names=["localhost", "proxy"],
                    ip_addresses=["127.0.0.1"])  # fmt: skip
        push(t, _resources(t, tls_secret(SECRET_NAME, own.cert_pem, own.key_pem)), version=f"tls-{next(_RUNS)}",
             what=_("the starting certificate"))  # fmt: skip
        before = wait_until(lambda: _presented(t), 3.0)
    if before == new:
        if new in _ROTATED.get(id(lab), set()):  # this check put it there: the cell ran again
            return _("listener_0 presents your certificate (serial {serial}) since an earlier run of this check "
                     "rotated to it; to rotate again, issue another one").format(serial=new)
        raise Fail(_("listener_0 already presents serial {serial}: your secret holds the certificate it has").format(
            serial=new),
            _("rotating means a new certificate: issue one from ca (issue(ca, ...)) and put it in the secret"))
    pid = lab.envoy.pid if lab.envoy is not None else None
    runs = under_traffic(t, lambda: push(t, _resources(t, sds), version=f"tls-{next(_RUNS)}", what=_("your secret")),
                         url=https_url(lab), verify=False, label=_("check {key}").format(key="13.2"))  # fmt: skip
    sent = no_failures(runs, lambda _f: _("an SDS update swaps the certificate for new connections only; "
                                          "failures mean the listener changed too: change the secret alone"))
    presented = wait_until(lambda: _presented(t) == new, 3.0)
    if not presented:
        raise Fail(_("after your push listener_0 still presents serial {serial}, not yours ({new})").format(
            serial=_presented(t), new=new),
            _("Envoy takes the new certificate with the SDS update: is the key the new certificate's?"))
    serials = _envoy_serials(t)
    if lab.envoy is not None and lab.envoy.pid != pid:
        raise Fail(_("Envoy was restarted"), _("the point is to rotate without a restart"))
    _ROTATED.setdefault(id(lab), set()).add(new)
    return _("{sent} HTTPS requests during the rotation, none failed; new connections now get serial {new} (was "
             "{before}), and Envoy's /certs lists {serials}; Envoy was not restarted").format(
        sent=sent, new=new, before=before, serials=", ".join(serials))


EXERCISES = [
    Exercise(
        "13.1", N_("The certificate, as an SDS secret"),
        N_("Put the certificate first (and its key) in an SDS secret named server_cert. The check pushes it with "
           "listener_0, now speaking TLS with the certificate of server_cert, and connects over HTTPS."),
        _check_secret,
        placeholder="secret = None  # the SDS secret server_cert: first's certificate and private key",
        solution='secret = labxds.tls_secret("server_cert", first.cert_pem, first.key_pem)',
        answers=("secret",),
        mistakes=(
            'secret = labxds.tls_secret("server-cert", first.cert_pem, first.key_pem)',  # the listener's name differs
            'secret = labxds.validation_secret("server_cert", ca.cert_pem)',  # a CA, no certificate to present
        ),
        given=GIVEN,
        docs=(f"{DOCS}/configuration/security/secret", f"{DOCS}/api-v3/extensions/transport_sockets/tls/v3/secret.proto"),
    ),
    Exercise(
        "13.2", N_("Rotate the certificate live"),
        N_("Issue a new certificate from ca and push it as server_cert again. The check runs HTTPS traffic while it "
           "pushes your secret, then asks which certificate new connections get and what Envoy's /certs lists."),
        _check_rotation,
        placeholder="rotated = None  # server_cert again, with a new certificate issued from ca",
        solution='''\
second = issue(ca, "listener_0", server=True, **names)
rotated = labxds.tls_secret("server_cert", second.cert_pem, second.key_pem)''',
        answers=("rotated",),
        mistakes=(
            'rotated = labxds.tls_secret("server_cert", first.cert_pem, first.key_pem)',  # the same certificate
            'second = issue(ca, "listener_0", server=True, **names)\n'
            'rotated = labxds.tls_secret("server_cert_v2", second.cert_pem, second.key_pem)',  # listener_0 ignores it
        ),
        given=GIVEN + '''\
secret = labxds.tls_secret("server_cert", first.cert_pem, first.key_pem)
from labxds.classroom.course.lesson13 import serve_tls
serve_tls(lab, secret)  # where 13.1 left the lab
''',
        docs=(f"{DOCS}/configuration/security/secret#key-rotation",
              f"{DOCS}/operations/admin#get--certs"),
    ),
]
