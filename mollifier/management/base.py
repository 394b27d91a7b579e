"""What the management commands that use the buffer share."""

from django.core.management.base import BaseCommand, CommandError

from mollifier.exceptions import BufferUnavailable


class BufferCommand(BaseCommand):
    """A command that reads or changes the buffer. When its Redis does not answer, the operator
    (who runs these commands exactly then) gets one line that says so and exit code 1, not a
    traceback."""

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except BufferUnavailable as error:
            raise CommandError(
                f"the buffer's Redis did not answer ({error}); nothing more was done. "
                "Check that Redis is up and that REDIS_URL names it."
            ) from None
