"""The mail engine: SMTP submission, the submit path, the SES relay and its jobs."""
