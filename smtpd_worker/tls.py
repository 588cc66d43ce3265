"""TLS for the submission listeners: server contexts and the dev self-signed certificate."""
import datetime
import ipaddress
import ssl
from pathlib import Path


def ensure_dev_certificate(directory, hostname):
    """Create (once) a self-signed ECDSA P-256 certificate for ``hostname``; return (cert, key) paths.

    P-256 rather than RSA-2048: the handshake costs about half the CPU in Python's ssl.
    """
    directory = Path(directory)
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    if cert_path.exists() and key_path.exists():
        return str(cert_path), str(key_path)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt_names = [x509.DNSName(hostname), x509.DNSName("localhost"),
                 x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_path), str(key_path)


def certificate_paths(config):
    smtp = config["smtp"]
    if smtp["cert_file"] and smtp["key_file"]:
        return smtp["cert_file"], smtp["key_file"]
    return ensure_dev_certificate(Path(config["server"]["data_dir"]) / "tls", config["server"]["hostname"])


def server_context(config):
    """TLS 1.2+ server context with the configured (or dev) certificate."""
    cert, key = certificate_paths(config)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.options |= ssl.OP_NO_COMPRESSION
    return context
