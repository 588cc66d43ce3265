"""The certificate files of the submission listeners: the configured pair, or the self-signed
development certificate created on first use (and its PEM, which GET /v1/smtp hands to clients
that must trust it). Files only: smtpd_worker/tls.py builds the ssl contexts from them."""
import datetime
import fcntl
import ipaddress
import os
from pathlib import Path


LOOPBACK_IPS = ("127.0.0.1", "::1")  # what `inboxlayer dev` and the README tell clients to dial


def dev_certificate_names(config):
    """(DNS names, IP addresses) the dev certificate must cover: every host the banner, README,
    dashboard and /v1/smtp print, and the addresses clients reach the listeners by."""
    dns = [config["server"]["hostname"], config["smtp"]["public_host"], "localhost"]
    ips = list(LOOPBACK_IPS)
    for host in (config["smtp"]["host"], config["smtp"]["public_host"]):
        ip = _ip(host)
        if ip is not None and not ip.is_unspecified:
            ips.append(str(ip))
    dns = [name for name in dns if name and _ip(name) is None]
    return list(dict.fromkeys(dns)), list(dict.fromkeys(ips))


def ensure_dev_certificate(directory, hostname, ips=LOOPBACK_IPS, names=()):
    """Create a self-signed ECDSA P-256 certificate; return (cert, key) paths.

    It covers ``hostname``, ``names`` and localhost as DNS names and ``ips`` as IP addresses. Each
    IP is also listed as a DNS name: clients such as s-nail compare the host they dialled with the
    DNS names only, while OpenSSL-based ones (Python, curl, swaks) match IP literals against the IP
    entries alone, so an IP must be in both. An existing certificate is reused while it covers all
    of these; one from an older version that does not is replaced.
    P-256 rather than RSA-2048: the handshake costs about half the CPU in Python's ssl.
    """
    directory = Path(directory)
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    dns = list(dict.fromkeys([hostname, *names, "localhost"]))
    ips = list(dict.fromkeys(str(ipaddress.ip_address(ip)) for ip in ips))
    if _covers(cert_path, key_path, dns, ips):
        return str(cert_path), str(key_path)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / ".lock", "a") as lock:  # several smtpd processes may start at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _covers(cert_path, key_path, dns, ips):
            _write_certificate(cert_path, key_path, hostname, dns, ips)
    return str(cert_path), str(key_path)


def _ip(text):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _covers(cert_path, key_path, dns, ips):
    if not (cert_path.exists() and key_path.exists()):
        return False
    # cryptography is loaded only when a dev certificate is checked or made (not for a cycle):
    # a server with a configured certificate never needs it.
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    have_dns = set(alt.get_values_for_type(x509.DNSName))
    have_ips = {str(ip) for ip in alt.get_values_for_type(x509.IPAddress)}
    return set(dns) | {ip for ip in ips if "." in ip} <= have_dns and set(ips) <= have_ips


def _write_certificate(cert_path, key_path, hostname, dns, ips):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt_names = ([x509.DNSName(n) for n in dict.fromkeys(dns + [ip for ip in ips if "." in ip])]
                 + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _replace(key_path, key_pem)
    _replace(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _replace(path, data):
    """Write ``data`` to ``path`` (0600) by rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def certificate_paths(config):
    smtp = config["smtp"]
    if smtp["cert_file"] and smtp["key_file"]:
        return smtp["cert_file"], smtp["key_file"]
    dns, ips = dev_certificate_names(config)
    return ensure_dev_certificate(Path(config["server"]["data_dir"]) / "tls", config["server"]["hostname"],
                                  ips=ips, names=dns)


def dev_certificate_pem(config):
    """The self-signed certificate's PEM when the server uses one (clients must trust it
    explicitly), else None: a configured certificate chains to a CA clients already trust."""
    smtp = config["smtp"]
    if smtp["cert_file"] and smtp["key_file"]:
        return None
    cert, _ = certificate_paths(config)
    return Path(cert).read_text()
