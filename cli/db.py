"""`inboxlayer db`: schema creation and migrations."""
import typer

import models
from cli.common import console
from cli.common import database

app = typer.Typer(help="Database schema: create and migrate.", no_args_is_help=True)


@app.command()
def init():
    """Create or upgrade the schema (idempotent; safe to run on every deploy)."""
    with database() as config:
        applied = models.migrate_schema()
    where = config["database"]["url"].split("@")[-1]
    if applied:
        console.print(f"[green]applied[/] {', '.join(applied)} on {where}")
    else:
        console.print(f"schema up to date on {where}")


@app.command()
def status():
    """List migrations and whether each is applied."""
    with database():
        rows = models.schema_status()
    for row in rows:
        mark = "[green]applied[/]" if row.applied else "[yellow]pending[/]"
        console.print(f"{row.name:40} {mark}")
