"""
C{jsonsync}: the operator's command (C{twist jsonsync} stays the server).

The verbs are Kinto's: C{init}, C{check}, C{migrate}, C{create-user},
C{purge-deleted}, C{version}; and C{attachments-cleanup} (attachment plugin). Each reads the settings like a start would
(C{--config}, C{JSONSYNC_*} variables, C{-s NAME=VALUE}) and ends with
status 0 on success, 1 with the problems listed otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import os
import secrets
import sys

from jsonsync import __version__, config


class Failed(Exception):
    """A command that cannot do its work: every line is printed, status 1."""

    def __init__(self, *problems: str):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def _settings(args):
    from jsonsync.registry import configure, discover

    cli = {}
    for item in args.setting or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise Failed(f"--setting needs NAME=VALUE, got {item!r}")
        cli[name.strip()] = value
    try:
        return configure(args.config, os.environ, cli, discover())
    except config.ConfigurationError as e:
        raise Failed(*e.problems) from None


def _run(coroutine_function):
    """Run C{coroutine_function(reactor)} under a reactor and return its result."""
    from twisted.internet import defer, task

    outcome = {}

    async def body(reactor):
        try:
            outcome["value"] = await coroutine_function(reactor)
        except BaseException as e:  # carried out of react(), which would exit on its own
            outcome["error"] = e

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(body(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


async def _open(settings, discovered, reactor):
    """The server as a start would build it, without listening."""
    from jsonsync.server import build

    return await build(settings, reactor, discovered)


# -- init ------------------------------------------------------------------------

_INIT_TEMPLATE = """\
# jsonsync configuration, written by `jsonsync init` on {date}.
# Start the server with:  twist jsonsync --config {path}
# Every setting and its default:  twist jsonsync --help-settings
# Any setting can also come from a JSONSYNC_<NAME> environment variable.

[jsonsync]
{backend}
# Plugins, in order (installed: accounts default_bucket flush history schema).
includes = {includes}

# Authentication policies, in order. With the accounts plugin, `account`
# comes first; create the first administrator with
#   jsonsync --config {path} create-user admin --admin
multiauth.policies = {policies}
{accounts}
# Key of the basicauth user-id derivation: keep it secret and never change
# it (every basicauth user id would change with it).
userid_hmac_secret = {userid_secret}

# Key of the personal `default` bucket ids (default_bucket plugin).
default_bucket_hmac_secret = {bucket_secret}

# Who may create buckets.
bucket_create_principals = system.Authenticated

# Tombstones older than this many days are removed by `jsonsync purge-deleted`.
# tombstones_retention_days = 90
"""

_MEMORY = """# Storage: everything lives in the process and is lost when it stops.
# For anything real, use postgresql (and `jsonsync migrate`).
storage_backend = memory
permission_backend = memory
"""

_POSTGRESQL = """# Storage: PostgreSQL (apply the schema first with `jsonsync --config {path} migrate`).
storage_backend = postgresql
permission_backend = postgresql
storage_url = {url}
storage_pool_size = 10
"""

_ACCOUNTS = """
# Accounts: only administrators (account:admin) create accounts and manage
# every account; each user manages their own.
account_create_principals = account:admin
account_write_principals = account:admin
account_read_principals = account:admin
"""


def cmd_init(args) -> str:
    backend = _MEMORY
    if args.backend == "postgresql":
        backend = _POSTGRESQL.format(path=args.path, url=args.storage_url)
    accounts = not args.no_accounts
    text = _INIT_TEMPLATE.format(
        date=datetime.date.today().isoformat(),
        path=args.path,
        backend=backend,
        includes="default_bucket accounts" if accounts else "default_bucket",
        policies="account basicauth" if accounts else "basicauth",
        accounts=_ACCOUNTS if accounts else "",
        userid_secret=secrets.token_hex(32),
        bucket_secret=secrets.token_hex(32),
    )
    try:
        # "x": never overwrite a file that may hold the secrets in use.
        with open(args.path, "x", encoding="utf-8") as f:
            os.chmod(args.path, 0o600)
            f.write(text)
    except FileExistsError:
        raise Failed(f"{args.path} exists: not overwritten (remove it or choose another path)") from None
    except OSError as e:
        raise Failed(f"cannot write {args.path}: {e}") from None
    return f"wrote {args.path} (storage: {args.backend}); check it with: jsonsync --config {args.path} check"


# -- check -----------------------------------------------------------------------


def cmd_check(args) -> str:
    settings, discovered = _settings(args)

    async def probe(reactor):
        problems = []
        try:
            app = await _open(settings, discovered, reactor)
        except config.ConfigurationError as e:
            raise Failed(*e.problems) from None
        except Exception as e:
            from jsonsync.tap import describe_failure

            raise Failed(describe_failure(e)) from None
        try:
            for name, backend in (("storage", app.registry.storage), ("permission", app.registry.permissions)):
                heartbeat = getattr(backend, "heartbeat", None)
                message = f"{settings[name + '_backend']} database unreachable (its heartbeat failed)"
                if heartbeat is not None and message not in problems and not await heartbeat():
                    problems.append(message)
        finally:
            await app.registry.close()
        if problems:
            raise Failed(*problems)

    _run(probe)
    lines = [f"warning: {w}" for w in settings.warnings]
    lines.append("configuration OK")
    return "\n".join(lines)


# -- migrate ---------------------------------------------------------------------


def _postgresql_urls(settings) -> list[str]:
    urls = []
    if settings["storage_backend"] == "postgresql":
        urls.append(settings["storage_url"])
    if settings["permission_backend"] == "postgresql":
        url = settings.get("permission_url") or settings["storage_url"]
        if url not in urls:
            urls.append(url)
    return urls


def cmd_migrate(args) -> str:
    from jsonsync.errors import BackendUnavailable
    from jsonsync.storage import postgresql

    settings, _ = _settings(args)
    urls = _postgresql_urls(settings)
    if not urls:
        return "nothing to migrate: the memory backends keep no schema"

    async def apply(reactor):
        done = []
        for url in urls:
            try:
                postgresql.check_url(url)
                version = await postgresql.migrate(url, reactor)
            except ValueError as e:
                raise Failed(str(e)) from None
            except BackendUnavailable as e:
                raise Failed(
                    f"database unreachable ({postgresql.redact(url)}): {e.__cause__ or e}"
                ) from None
            done.append(f"{postgresql.redact(url)}: schema at version {version}")
        return "\n".join(done)

    return _run(apply)


# -- create-user -----------------------------------------------------------------


def cmd_create_user(args) -> str:
    from jsonsync.errors import BackendUnavailable
    from jsonsync.plugins import accounts

    settings, discovered = _settings(args)
    if "accounts" not in settings["includes"]:
        raise Failed("the accounts plugin is not in includes: there is nowhere to create a user")
    if "memory" in (settings["storage_backend"], settings["permission_backend"]):
        raise Failed(
            "the memory backend keeps nothing once this command ends: create the user "
            "through the API of the running server instead (POST /v1/accounts)"
        )
    if not accounts.ACCOUNT_ID.match(args.name):
        raise Failed(f"invalid user name {args.name!r}")
    admin_principal = f"{accounts.POLICY_NAME}:{args.name}"
    if args.admin and admin_principal not in settings.principals("account_write_principals"):
        raise Failed(
            f"{args.name} would not be an administrator: add {admin_principal} to "
            "account_write_principals (and to account_create_principals to let it create accounts)"
        )
    password = args.password
    if password is None:
        password = getpass.getpass(f"Password for {args.name}: ")
        if password != getpass.getpass("Again: "):
            raise Failed("the passwords differ")
    if not password:
        raise Failed("empty password")
    rounds = settings["account_bcrypt_rounds"]

    async def create(reactor):
        from twisted.internet.threads import deferToThread

        from jsonsync.registry import Registry

        registry = Registry(settings, reactor, discovered)
        try:
            await registry.open_backends()
        except ValueError as e:
            raise Failed(str(e)) from None
        try:
            hashed = await deferToThread(accounts.hash_password, password, rounds)
            storage, permissions = registry.storage, registry.permissions
            txn = storage.transaction()
            try:
                existing = await storage.get(txn, accounts.POLICY_NAME, "", args.name)
                obj = {"id": args.name, "password": hashed}
                if existing is None:
                    await storage.create(txn, accounts.POLICY_NAME, "", obj)
                elif args.update:
                    await storage.update(txn, accounts.POLICY_NAME, "", args.name, {**existing, **obj})
                else:
                    raise Failed(f"account {args.name} exists (use --update to set its password)")
                uri = f"/accounts/{args.name}"
                acl = await permissions.get_object_permissions(txn, uri)
                writers = set(acl.get("write", ())) | {admin_principal}
                await permissions.replace_object_permissions(txn, uri, {**acl, "write": writers})
                await txn.commit()
            except BaseException:
                await txn.rollback()
                raise
        except BackendUnavailable as e:
            raise Failed(f"database unreachable: {e.__cause__ or e}") from None
        finally:
            await registry.close()
        return "updated" if existing is not None else "created"

    done = _run(create)
    role = " (administrator)" if admin_principal in settings.principals("account_write_principals") else ""
    return f"account {args.name} {done}{role}; its user id is {admin_principal}"


# -- purge-deleted ---------------------------------------------------------------


def _cutoff(args, settings) -> datetime.datetime:
    now = datetime.datetime.now(datetime.timezone.utc)
    if args.before:
        try:
            day = datetime.date.fromisoformat(args.before)
        except ValueError:
            raise Failed(f"--before needs a YYYY-MM-DD date, got {args.before!r}") from None
        return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc)
    days = args.older_than if args.older_than is not None else settings["tombstones_retention_days"]
    if days is None:
        raise Failed("say which tombstones to remove: --older-than DAYS, --before YYYY-MM-DD, "
                     "or set tombstones_retention_days")
    if days < 1:
        raise Failed("--older-than needs at least 1 day")
    return now - datetime.timedelta(days=days)


def cmd_purge_deleted(args) -> str:
    from jsonsync.storage import postgresql

    settings, _ = _settings(args)
    cutoff = _cutoff(args, settings)
    if settings["storage_backend"] == "memory":
        return "nothing to purge: the memory backend keeps no tombstones once the server stops"
    if settings["storage_backend"] != "postgresql":
        raise Failed(f"purge-deleted does not know the {settings['storage_backend']!r} backend")
    url = settings["storage_url"]
    try:
        postgresql.check_url(url)
    except ValueError as e:
        raise Failed(str(e)) from None
    import psycopg2

    # last_modified is in milliseconds since the epoch. Tombstones only: a
    # client that syncs from before the cutoff no longer learns of those
    # deletions (as with Kinto's purge).
    millis = int(cutoff.timestamp() * 1000)
    try:
        with psycopg2.connect(url, connect_timeout=10) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM objects WHERE deleted AND last_modified < %s", (millis,))
            count = cur.rowcount
        conn.close()
    except psycopg2.Error as e:
        raise Failed(f"purge failed ({postgresql.redact(url)}): {str(e).strip()}") from None
    return f"removed {count} tombstone(s) older than {cutoff.isoformat(timespec='seconds')}"


# -- attachments-cleanup -----------------------------------------------------------


def cmd_attachments_cleanup(args) -> str:
    from jsonsync.errors import BackendUnavailable
    from jsonsync.plugins import attachment_cleanup
    from jsonsync.plugins.attachment import make_store
    from jsonsync.plugins.attachment_s3 import S3Error

    settings, discovered = _settings(args)
    if "attachment" not in settings["includes"]:
        raise Failed("the attachment plugin is not in includes: there are no attachment files to clean")
    if settings["storage_backend"] == "memory":
        raise Failed("the memory backend keeps no records once the server stops: "
                     "every file would look unreferenced, so nothing is removed")
    if args.grace < 0:
        raise Failed("--grace needs a number of seconds (0 or more)")

    async def sweep(reactor):
        from jsonsync.registry import Registry

        registry = Registry(settings, reactor, discovered)
        try:
            await registry.open_backends()
            store = make_store(settings)
            return await attachment_cleanup.cleanup(registry.storage, store, args.grace, args.dry_run)
        except ValueError as e:
            raise Failed(str(e)) from None
        except BackendUnavailable as e:
            raise Failed(f"database unreachable: {e.__cause__ or e}") from None
        except (OSError, S3Error) as e:
            raise Failed(f"the attachment store failed: {e}") from None
        finally:
            await registry.close()

    report = _run(sweep)
    verb = "would remove" if args.dry_run else "removed"
    return "\n".join([f"{verb} {name}" for name in report.partial + report.removed] + [report.summary(args.dry_run)])


# -- version ---------------------------------------------------------------------


def cmd_version(args) -> str:
    return __version__


# -- the command -----------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jsonsync",
        description="Operate a jsonsync server (run it with `twist jsonsync`).",
    )
    p.add_argument("-c", "--config", help="an INI file with a [jsonsync] section")
    p.add_argument("-s", "--setting", action="append", metavar="NAME=VALUE",
                   help="one setting (repeatable; wins over the file and the environment)")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = commands.add_parser("init", help="write a new configuration file with fresh secrets")
    c.add_argument("path", nargs="?", default="jsonsync.ini")
    c.add_argument("--backend", choices=("memory", "postgresql"), default="postgresql")
    c.add_argument("--storage-url", default="postgresql://jsonsync@localhost:5432/jsonsync")
    c.add_argument("--no-accounts", action="store_true", help="basicauth only, no accounts plugin")
    c.set_defaults(func=cmd_init)

    c = commands.add_parser("check", help="validate the configuration as a start would")
    c.set_defaults(func=cmd_check)

    c = commands.add_parser("migrate", help="create or upgrade the PostgreSQL schema")
    c.set_defaults(func=cmd_migrate)

    c = commands.add_parser("create-user", help="create an account in the configured storage")
    c.add_argument("name")
    c.add_argument("--password", help="the password (asked for when missing)")
    c.add_argument("--admin", action="store_true",
                   help="require that the account is an administrator (in account_write_principals)")
    c.add_argument("--update", action="store_true", help="set the password of an existing account")
    c.set_defaults(func=cmd_create_user)

    c = commands.add_parser("purge-deleted", help="remove old tombstones (PostgreSQL)")
    when = c.add_mutually_exclusive_group()
    when.add_argument("--older-than", type=int, metavar="DAYS")
    when.add_argument("--before", metavar="YYYY-MM-DD")
    c.set_defaults(func=cmd_purge_deleted)

    c = commands.add_parser("attachments-cleanup",
                            help="remove attachment files that no record points to (attachment plugin)")
    c.add_argument("--grace", type=float, default=3600, metavar="SECONDS",
                   help="spare files younger than this, uploads in flight (default: 3600)")
    c.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    c.set_defaults(func=cmd_attachments_cleanup)

    c = commands.add_parser("version", help="print the version")
    c.set_defaults(func=cmd_version)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        print(args.func(args))
    except Failed as e:
        print(f"jsonsync {args.command}: failed", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
