"""TLS for the submission listeners: the server context, from the files core.devcert provides."""
import ssl

from core import devcert


def server_context(config):
    """TLS 1.2+ server context with the configured (or dev) certificate."""
    cert, key = devcert.certificate_paths(config)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.options |= ssl.OP_NO_COMPRESSION
    return context
