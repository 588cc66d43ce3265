"""GET /v1/smtp: how to reach this server's SMTP submission, for clients that configure themselves.

The same facts the dashboard's inbox page shows (host, ports, limits), plus the certificate to
trust when the server runs on its self-signed development certificate, so `inboxlayer send
--via smtp` works against `make run` with nothing but the API URL and a token.
"""
from flask import jsonify

from core import devcert
from webapp.views import app_config
from webapp.views import app_settings

AUTH_MECHANISMS = ["PLAIN", "LOGIN"]  # advertised after TLS (docs/smtp.md)


def show():
    smtp = app_settings().smtp
    return jsonify(
        host=smtp.public_host,
        starttls_port=smtp.starttls_port or None,
        tls_port=smtp.tls_port or None,
        auth_mechanisms=AUTH_MECHANISMS,
        username="The inbox address",
        max_message_size=smtp.max_message_size,
        max_recipients=smtp.max_recipients,
        certificate=devcert.dev_certificate_pem(app_config()),
    )
