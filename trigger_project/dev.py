"""``make run``: embedded servers (unless URLs are set), migrations, a demo key, and the server.

Runs in the foreground. Ctrl-C (or SIGTERM) stops the web server and every embedded server this
process started; servers that were already running (started by ``make services``) are left as they
were. On the embedded servers it writes the settings it runs with to ``.dev/env`` for the
``manage.py`` commands of this clone (trigger_project/embedded.py), and removes the file on exit.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

from trigger_project import embedded


def _manage(*args: str, env: dict) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], env=env, check=True, stdout=subprocess.PIPE, text=True
    )
    return result.stdout


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM shuts down exactly like Ctrl-C


def main() -> int:
    # Installed explicitly: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    env = os.environ.copy()
    # Every process of this run (web workers, the drainer) writes its metrics here; /metrics sums them.
    metrics_dir = embedded.DEV_DIR / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    # The demo is the product: the mollifier is on and the demo organisation enrolled (seed_demo).
    env.setdefault("MOLLIFIER_ENABLED", "1")
    # A development server: tracebacks, the dev-only SECRET_KEY, plain HTTP (settings default to off).
    env.setdefault("DEBUG", "1")
    stops: list = []
    shares_env = not env.get("DATABASE_URL") and not env.get("REDIS_URL")
    children: list[subprocess.Popen] = []

    def shutdown():
        for child in children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 20
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        if shares_env:
            embedded.remove_shared_env(pid=os.getpid())
        for stop in stops:
            stop()
        print("stopped.", flush=True)

    try:
        if not env.get("DATABASE_URL"):
            if not embedded.postgres_running():
                stops.append(embedded.stop_postgres)
            env["DATABASE_URL"] = embedded.ensure_postgres()
            print(f"embedded Postgres: {env['DATABASE_URL']}", flush=True)
        if not env.get("REDIS_URL"):
            if not embedded.redis_running():
                stops.append(embedded.stop_redis)
            env["REDIS_URL"] = embedded.ensure_redis()
            print(f"embedded Redis:    {env['REDIS_URL']}", flush=True)
        if shares_env:
            shared = embedded.write_shared_env(env, pid=os.getpid())
            print(f"manage.py commands of this clone use these settings too: {shared}", flush=True)
        _manage("migrate", "--noinput", env=env)
        print(_manage("seed_demo", env=env), end="", flush=True)
        port = env.get("PORT", "8000")
        workers = env.get("WEB_CONCURRENCY", str(os.cpu_count() or 2))
        children.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "trigger_project.wsgi",
                    "--workers",
                    workers,
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--access-logfile",
                    "-" if env.get("ACCESS_LOG") else "/dev/null",
                    "--graceful-timeout",
                    "10",
                ],
                env=env,
            )
        )
        children.append(subprocess.Popen([sys.executable, "manage.py", "mollifier_drain"], env=env))
        # The sweep, as in production (docs/OPERATIONS.md): it repairs what no request path can, such as
        # an organisation left out of the index when a web process died between accept and indexing.
        sweep = [sys.executable, "manage.py", "mollifier_sweep", "--every", "30", "--quiet"]
        children.append(subprocess.Popen(sweep, env=env))
        print(
            f"serving on http://127.0.0.1:{port}  (admin: /admin/)  with a drainer and the sweep beside it; "
            "Ctrl-C stops",
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("a child process exited; stopping.", flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
