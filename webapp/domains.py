"""(filled in by its issue)"""
from flask import Blueprint

bp = Blueprint("domains", __name__)
