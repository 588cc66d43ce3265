"""REST API v1 (filled in by its issue)."""
from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/v1")
