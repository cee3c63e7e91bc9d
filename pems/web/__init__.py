"""The web app: results already written (``pems serve DIR``), and later the live home."""
