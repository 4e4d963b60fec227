"""The WSGI application corral serves: `corral run mysite/wsgi.py` from the project's folder."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

application = get_wsgi_application()
