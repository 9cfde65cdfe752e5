"""The HTTP shell: Flask app factory, legacy routes, /v1, errors, metrics, TLS, gunicorn."""
