"""corral's exit codes (documented in the README; gunicorn's and uvicorn's conventions)."""

OK = 0  # stopped cleanly, by a signal or on request
FAILURE = 1  # an unexpected error in corral itself
USAGE = 2  # a bad flag or setting, or an address that cannot be bound (port in use)
APP_FAILED = 3  # the app cannot start: import error, missing attribute, lifespan failure
PRESTART_FAILED = 4  # a [prestart] step failed; nothing else was started
