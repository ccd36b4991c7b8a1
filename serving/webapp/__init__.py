"""The pathologist-facing Django web app (project `histopath.serving.webapp`).

Run it with `histopath serve` (gunicorn; `--dev` for Django's runserver) or directly with
`gunicorn histopath.serving.webapp.wsgi:application` after `migrate`.
"""
