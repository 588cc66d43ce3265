"""IMAP access to an inbox's folders (Sent), with the same API tokens as SMTP and REST."""
