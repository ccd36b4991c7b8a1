"""The pathologist-facing Django web app (project `histopath.serving.webapp`).

Run it with `histopath serve` (gunicorn with uvicorn workers on the ASGI app `asgi.py`,
which reads whole requests before Django sees them; `--dev` for Django's runserver).
`wsgi.py` stays for WSGI servers that buffer requests themselves.
"""
