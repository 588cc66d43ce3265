"""Index Message.blob_key: the orphan-blob sweeper asks which of a batch of keys rows refer to."""


def up(migrator, db):
    migrator.migrate(migrator.add_index("message", ("blob_key",), False))


def down(migrator, db):
    migrator.migrate(migrator.drop_index("message", "message_blob_key"))
