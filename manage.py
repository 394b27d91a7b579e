#!/usr/bin/env python
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trigger_project.settings")
    # On this clone's embedded servers (DATABASE_URL and REDIS_URL unset): take the running `make run`'s
    # settings, and stop with a clear message when a server the command needs is not running.
    from trigger_project import embedded

    if status := embedded.prepare_command(sys.argv[1:], os.environ, sys.stderr):
        sys.exit(status)
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
