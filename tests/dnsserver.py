"""A tiny authoritative DNS server on loopback (UDP and TCP) whose records a test can change.

Built on dnspython's wire parsing so domain checks run the real resolver code over real sockets.
Records live in ``server.records``: {(name, rdtype): [rdata text, ...]}, names without the final dot.
"""
import socketserver
import struct
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 60  # seconds


class DNSServer:
    def __init__(self, host="127.0.0.1"):
        self.records = {}
        self.queries = []
        self._lock = threading.Lock()
        answer = self.answer

        class UDPHandler(socketserver.BaseRequestHandler):
            def handle(self):
                data, sock = self.request
                reply = answer(data)
                if reply:
                    sock.sendto(reply, self.client_address)

        class TCPHandler(socketserver.BaseRequestHandler):
            def handle(self):
                header = self.request.recv(2)
                if len(header) < 2:
                    return
                (length,) = struct.unpack("!H", header)
                data = b""
                while len(data) < length:
                    chunk = self.request.recv(length - len(data))
                    if not chunk:
                        return
                    data += chunk
                reply = answer(data)
                if reply:
                    self.request.sendall(struct.pack("!H", len(reply)) + reply)

        self.udp = socketserver.ThreadingUDPServer((host, 0), UDPHandler)
        port = self.udp.server_address[1]
        try:
            self.tcp = socketserver.ThreadingTCPServer((host, port), TCPHandler)
        except OSError:  # the same TCP port is taken by someone else: UDP alone is enough
            self.tcp = None
        self.host, self.port = host, port

    @property
    def address(self):
        """The ``dns.resolver`` setting that points at this server."""
        return f"{self.host}:{self.port}"

    def set(self, name, rdtype, *values):
        with self._lock:
            key = (name.rstrip(".").lower(), rdtype.upper())
            if values:
                self.records[key] = list(values)
            else:
                self.records.pop(key, None)

    def clear(self):
        with self._lock:
            self.records.clear()

    def answer(self, wire):
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # garbage on the socket: a real server drops it too
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((name, rdtype))
            values = self.records.get((name, rdtype))
            name_exists = any(n == name for n, _ in self.records)
        if values:
            rrset = dns.rrset.from_text_list(question.name, TTL, dns.rdataclass.IN, question.rdtype, values)
            response.answer.append(rrset)
        elif not name_exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    def start(self):
        for server in (self.udp, self.tcp):
            if server is not None:
                threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                                 name="dnsserver").start()
        return self

    def stop(self):
        for server in (self.udp, self.tcp):
            if server is not None:
                server.shutdown()
                server.server_close()


def txt(value):
    """TXT rdata text for ``value`` (quoted, split into 255-octet strings)."""
    chunks = [value[i:i + 255] for i in range(0, len(value), 255)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


def publish(server, records):
    """Publish the records a domain page lists (as returned by core.domains.expected_records)."""
    grouped = {}
    for record in records:
        value = txt(record["value"]) if record["type"] == "TXT" else record["value"] + "."
        grouped.setdefault((record["name"], record["type"]), []).append(value)
    for (name, rdtype), values in grouped.items():
        server.set(name, rdtype, *values)
