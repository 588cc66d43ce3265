"""WSGI entry point for gunicorn (`inboxlayer web`): the only module that builds the app at import."""
from webapp import create_app

app = create_app()
