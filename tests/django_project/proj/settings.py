"""Settings of the test project. The database comes from the environment, so the tests run it on
SQLite and PostgreSQL: CD_DJANGO_DB=sqlite (CD_DJANGO_SQLITE: the file) or CD_DJANGO_DB=postgresql
(CD_DJANGO_PG_NAME: the database); CD_BROKER is the Celery broker, CD_QUEUE its queue."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "celery_durable.contrib.django",
    "shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "proj.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests

if os.environ.get("CD_DJANGO_DB", "sqlite") == "postgresql":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ["CD_DJANGO_PG_NAME"],
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": "5432",
            "OPTIONS": {"application_name": "celery_durable_django_tests"},
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("CD_DJANGO_SQLITE", str(BASE_DIR / "db.sqlite3")),
            # Take SQLite's write lock at BEGIN, as celery_durable's own connections do: a
            # transaction that reads, then writes, could otherwise fail with "database is locked".
            "OPTIONS": {"transaction_mode": "IMMEDIATE"},
        }
    }

CELERY_BROKER_URL = os.environ.get("CD_BROKER", "redis://127.0.0.1:6379/9")
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CD_QUEUE", "celery")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

CELERY_DURABLE = {
    "database": "default",
    "table_prefix": os.environ.get("CD_PREFIX", "durable_"),
    "sweep_interval": 2,
    "busy_backoff": 0.2,
    # Not the defaults, so tests/django_project/test_settings.py can tell each is honoured.
    "durability": "relaxed",
    "max_payload": 100_000,
    "engine_options": {"pool_size": 3, "max_overflow": 1},
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "/static/"
