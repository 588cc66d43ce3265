"""(filled in by its issue)"""
from flask import Blueprint

bp = Blueprint("dashboard", __name__)
