"""Server-side session invalidation: each account carries a session generation. A dashboard session
records the generation it began under; logging out (or changing the password) moves it on, so a
copied session cookie stops working at once."""
from peewee import IntegerField


def up(migrator, db):
    migrator.migrate(migrator.add_column("user", "session_epoch", IntegerField(default=0)))


def down(migrator, db):
    migrator.migrate(migrator.drop_column("user", "session_epoch"))
