"""The wire contract in code: shapes, cursors, codecs and a reference client."""
