"""Offline pipelines: raw corpora -> prepared TFDS array_record datasets + manifest.json."""
