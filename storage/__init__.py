"""Persistence: models, migrations, the change log and the cache / pub-sub backends."""
