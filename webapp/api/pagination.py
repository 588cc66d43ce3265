"""Cursor pagination: newest first, the cursor is the opaque position after the last item."""
import base64
import binascii

from flask import request

from webapp.api.errors import Invalid

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def limit_arg():
    raw = request.args.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise Invalid("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def encode_cursor(row_id):
    return base64.urlsafe_b64encode(f"id:{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor):
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        text = ""
    kind, _, number = text.partition(":")
    if kind != "id" or not number.isdigit() or len(number) > 18:
        raise Invalid("cursor", "is not a cursor this API returned")
    return int(number)


def paginate(query, id_field, serialize):
    """One page of ``query`` (ordered by ``id_field`` descending) as the list envelope."""
    limit = limit_arg()
    cursor = request.args.get("cursor")
    if cursor:
        query = query.where(id_field < decode_cursor(cursor))
    rows = list(query.order_by(id_field.desc()).limit(limit + 1))
    has_more = len(rows) > limit
    rows = rows[:limit]
    return {"data": [serialize(r) for r in rows], "has_more": has_more,
            "next_cursor": encode_cursor(rows[-1].id) if has_more else None}
