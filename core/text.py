"""Characters and shapes that must not reach a header or a name as they are: one definition for
display names (core.accounts), file names and header fields (core.mail). Stdlib only, so the
client CLI can load core.mail without the server stack."""
import re

LINE_BREAKS = set("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")  # what str.splitlines() breaks at
# Unicode bidirectional controls (UAX #9: embeddings, overrides, isolates, marks; Arabic letter mark):
# invisible, yet they reorder what a reader sees ("Trojan Source", CVE-2021-42574).
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Literal text shaped like an RFC 2047 encoded-word is decoded by every mail reader (RFC 2047 6.2),
# so the recipient would see something else than what was sent.
ENCODED_WORD = re.compile(r"=\?[^?]*\?[^?]*\?.*?\?=", re.S)
