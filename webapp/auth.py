"""Sign up, log in, log out (filled in by the dashboard issue)."""
from flask import Blueprint
from flask_login import UserMixin

bp = Blueprint("auth", __name__)


class LoginUser(UserMixin):
    """flask-login's view of a models.User."""

    def __init__(self, user):
        self.user = user
        self.id = str(user.id)
