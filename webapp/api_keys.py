"""(filled in by its issue)"""
from flask import Blueprint

bp = Blueprint("api_keys", __name__)
