# Copied from ../shared/bench/kinto/app.py.
"""WSGI entry point for Kinto (for granian / gunicorn / uwsgi), config from $KINTO_INI."""
import os

from pyramid.paster import get_app, setup_logging

_ini = os.environ["KINTO_INI"]
setup_logging(_ini)
application = get_app(_ini, "main")
