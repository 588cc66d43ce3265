"""Dashboard forms (Flask-WTF: every form carries a CSRF token).

Buttons that only change state (log out, revoke, delete, check now) need no form class: they are
plain POST forms with ``csrf_token()``, and CSRFProtect checks every POST app-wide.
"""
from email_validator import EmailNotValidError
from email_validator import validate_email
from flask_wtf import FlaskForm
from wtforms import BooleanField
from wtforms import EmailField
from wtforms import IntegerField
from wtforms import PasswordField
from wtforms import SelectField
from wtforms import SelectMultipleField
from wtforms import StringField
from wtforms import ValidationError
from wtforms.validators import DataRequired
from wtforms.validators import EqualTo
from wtforms.validators import Length
from wtforms.validators import NumberRange
from wtforms.validators import Optional
from wtforms.widgets import CheckboxInput
from wtforms.widgets import ListWidget

import models
from core import accounts
from core import keys
from core.event_vocabulary import EVENT_TYPES

PASSWORD_MIN = 10  # characters; NIST SP 800-63B asks for at least 8
PASSWORD_MAX = 200  # characters; long enough for passphrases, short enough to bound KDF input
MAX_ID = 2**31 - 1  # largest row id (Postgres serial); bigger ids in URLs are a 404, not an overflow


def _printable(form, field):
    # NUL and other control characters never belong in these fields, and Postgres rejects NUL outright.
    if field.data and not field.data.isprintable():
        raise ValidationError("Use printable characters only.")


def _valid_email(form, field):
    try:
        field.data = validate_email(field.data or "", check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise ValidationError(str(exc)) from None


def _password_validators():
    return [DataRequired("Enter a password."),
            Length(PASSWORD_MIN, PASSWORD_MAX, f"Use {PASSWORD_MIN} to {PASSWORD_MAX} characters.")]


class SignupForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired("Enter your email address."),
                                            Length(max=254, message="That address is too long."), _valid_email])
    password = PasswordField("Password", validators=_password_validators())
    confirm = PasswordField("Repeat password", validators=[EqualTo("password", "The passwords do not match.")])


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired("Enter your email address."), Length(max=254), _printable])
    password = PasswordField("Password", validators=[DataRequired("Enter your password."),
                                                     Length(max=PASSWORD_MAX)])


class ChangePasswordForm(FlaskForm):
    current = PasswordField("Current password", validators=[DataRequired("Enter your current password."),
                                                            Length(max=PASSWORD_MAX)])
    password = PasswordField("New password", validators=_password_validators())
    confirm = PasswordField("Repeat new password", validators=[EqualTo("password", "The passwords do not match.")])


EXPIRY_CHOICES = [("", "Never"), ("1d", "1 day"), ("7d", "7 days"), ("30d", "30 days"), ("90d", "90 days"),
                  ("365d", "1 year")]


class CheckboxesField(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class TokenForm(FlaskForm):
    """A new API key: the same choices as POST /v1/api-keys and `inboxlayer tokens create`
    (core/keys.py checks them). ``inboxes`` choices are the user's inboxes (set by the view)."""
    name = StringField("Name", validators=[DataRequired("Give the key a name, e.g. the agent that uses it."),
                                           Length(max=100, message="Use at most 100 characters.")])
    inboxes = CheckboxesField("Inboxes (none ticked = every inbox)", coerce=str, choices=[])
    permissions = CheckboxesField("Permissions (none ticked = send and read)",
                                  choices=[(p, p) for p in keys.PERMISSIONS], default=list(keys.DEFAULT_PERMISSIONS))
    expires_in = SelectField("Expires", choices=EXPIRY_CHOICES, default="")
    daily_limit = IntegerField("Daily send limit (optional)", validators=[
        Optional(), NumberRange(min=1, max=keys.MAX_DAILY_LIMIT, message="Use a whole number of sends, at least 1.")])
    sandbox = BooleanField("Sandbox: accept and store messages, never send them")

    def validate_name(self, field):
        field.data = " ".join(field.data.split())
        if not field.data.isprintable():
            raise ValidationError("Use printable characters only.")


class InboxForm(FlaskForm):
    local_part = StringField("Name", validators=[DataRequired("Choose the part before the @."),
                                                 Length(max=64, message="Use at most 64 characters.")])
    domain = SelectField("Domain", coerce=int, validate_choice=True)
    display_name = StringField("Display name", render_kw={"maxlength": models.MAX_DISPLAY_NAME})

    def validate_local_part(self, field):
        value = field.data.strip().lower()
        if not set(value) <= models.LOCAL_PART_ALLOWED or value[0] in ".-" or value[-1] in ".-" or ".." in value:
            raise ValidationError("Use letters, digits, '.', '-' and '_' (not first or last, no '..').")
        field.data = value

    def validate_display_name(self, field):
        # The same rule as the API and the CLI (core.accounts.clean_display_name), so none accepts what another refuses.
        try:
            field.data = accounts.clean_display_name(field.data)
        except accounts.DisplayNameError as exc:
            raise ValidationError(exc.reason[0].upper() + exc.reason[1:] + ".") from None


class DomainForm(FlaskForm):
    name = StringField("Domain", validators=[DataRequired("Enter a domain name, e.g. mail.example.com."),
                                             Length(max=253, message="A domain name has at most 253 characters.")])

    def validate_name(self, field):
        try:
            field.data = models.normalize_domain(field.data)
        except models.AddressError:
            raise ValidationError("That is not a valid domain name (e.g. mail.example.com).") from None


class WebhookForm(FlaskForm):
    url = StringField("URL", validators=[DataRequired("Enter the URL to POST events to."), Length(max=2048),
                                         _printable])
    events = SelectMultipleField("Events", choices=[(t, t) for t in EVENT_TYPES], validate_choice=True,
                                 widget=ListWidget(prefix_label=False), option_widget=CheckboxInput())
    inbox = SelectField("Inbox", coerce=int, validate_choice=True)
