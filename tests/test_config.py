"""Settings: sources and their precedence, environment names, validation."""

import os
import tempfile

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from jsonsync import config
from jsonsync.registry import configure, discover
from jsonsync.tap import Options


def write_ini(text: str) -> str:
    fd, path = tempfile.mkstemp(suffix=".ini")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


class SourcesTests(SynchronousTestCase):
    def setUp(self):
        self.discovered = discover()

    def load(self, ini=None, env=None, cli=None):
        path = write_ini(ini) if ini is not None else None
        if path:
            self.addCleanup(os.unlink, path)
        settings, _ = configure(path, env or {}, cli or {}, self.discovered)
        return settings

    def test_defaults(self):
        s = self.load()
        self.assertEqual(s["storage_backend"], "memory")
        self.assertEqual(s["batch_max_requests"], 25)
        self.assertIsNone(s["paginate_by"])
        self.assertEqual(s["bucket_create_principals"], ["system.Authenticated"])
        self.assertEqual(s["multiauth.policies"], ["basicauth"])

    def test_ini_then_env_then_cli(self):
        ini = "[jsonsync]\npaginate_by = 10\nbatch_max_requests = 5\nreadonly = true\n"
        s = self.load(ini, {"JSONSYNC_PAGINATE_BY": "20", "JSONSYNC_BATCH_MAX_REQUESTS": "7"},
                      {"batch_max_requests": "9"})
        self.assertEqual(s["paginate_by"], 20)
        self.assertEqual(s["batch_max_requests"], 9)
        self.assertIs(s["readonly"], True)

    def test_kinto_prefix_accepted_in_ini(self):
        s = self.load("[jsonsync]\nkinto.paginate_by = 3\n")
        self.assertEqual(s["paginate_by"], 3)

    def test_environment_names_with_dots(self):
        s = self.load(env={"JSONSYNC_MULTIAUTH_POLICIES": "basicauth",
                           "JSONSYNC_RECORD_READ_PRINCIPALS": "system.Everyone"})
        self.assertEqual(s["multiauth.policies"], ["basicauth"])
        self.assertEqual(s["record_read_principals"], ["system.Everyone"])

    def test_principal_settings_for_any_resource(self):
        s = self.load(cli={"collection_create_principals": "a b", "bucket_write_principals": "c"})
        self.assertEqual(s["collection_create_principals"], ["a", "b"])
        self.assertEqual(s["bucket_write_principals"], ["c"])

    def test_every_problem_reported_at_once(self):
        path = write_ini("[jsonsync]\nnot_a_setting = 1\npaginate_by = many\nincludes = nosuchplugin\n")
        self.addCleanup(os.unlink, path)
        with self.assertRaises(config.ConfigurationError) as caught:
            configure(path, {"JSONSYNC_PAGINATE_BY": "x"}, {"readonly": "perhaps"}, self.discovered)
        text = str(caught.exception)
        for expected in ("not_a_setting", "paginate_by", "nosuchplugin", "JSONSYNC_PAGINATE_BY", "readonly"):
            self.assertIn(expected, text)
        self.assertIn("installed:", text)
        self.assertGreaterEqual(len(caught.exception.problems), 4)

    def test_unknown_backend_and_policy(self):
        with self.assertRaises(config.ConfigurationError) as caught:
            configure(None, {}, {"storage_backend": "mongo", "multiauth.policies": "basicauth oidc"}, self.discovered)
        text = str(caught.exception)
        self.assertIn("'mongo'", text)
        self.assertIn("'oidc'", text)
        self.assertIn("memory", text)  # lists what is installed

    def test_duplicate_plugin(self):
        with self.assertRaises(config.ConfigurationError) as caught:
            configure(None, {}, {"includes": "flush flush"}, self.discovered)
        self.assertIn("listed twice", str(caught.exception))

    def test_missing_file(self):
        with self.assertRaises(config.ConfigurationError) as caught:
            configure("/nonexistent/jsonsync.ini", {}, {}, self.discovered)
        self.assertIn("/nonexistent/jsonsync.ini", str(caught.exception))

    def test_webhook_settings_out_of_range_stop_the_command_line(self):
        # Checked with the settings (a value of the right type but out of
        # range), not once the server has begun to start.
        with self.assertRaises(config.ConfigurationError) as caught:
            configure(None, {}, {"includes": "webhooks", "webhooks.pipeline_depth": "0",
                                 "webhooks.timeout_seconds": "90"}, self.discovered)
        text = str(caught.exception)
        self.assertIn("webhooks.pipeline_depth: must be at least 1", text)
        self.assertIn("webhooks.lease_seconds must exceed webhooks.timeout_seconds", text)

    def test_plugin_settings_accepted_only_when_included(self):
        with self.assertRaises(config.ConfigurationError):
            configure(None, {}, {"default_bucket_hmac_secret": "k"}, self.discovered)
        s = self.load(cli={"includes": "default_bucket", "default_bucket_hmac_secret": "k"})
        self.assertEqual(s["default_bucket_hmac_secret"], "k")

    def test_schema_switch_enables_plugin(self):
        s = self.load(cli={"experimental_collection_schema_validation": "true"})
        self.assertIn("schema", s["includes"])


class OptionsTests(SynchronousTestCase):
    def test_defaults(self):
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["listen"], "tcp:8888:interface=127.0.0.1")
        self.assertIsNone(options["config"])
        self.assertEqual(options.settings["storage_backend"], "memory")

    def test_setting_option(self):
        options = Options()
        options.parseOptions(["-s", "paginate_by=4", "--setting", "readonly=yes"])
        self.assertEqual(options.settings["paginate_by"], 4)
        self.assertTrue(options.settings["readonly"])

    def test_bad_setting_syntax(self):
        self.assertRaises(usage.UsageError, Options().parseOptions, ["-s", "paginate_by"])

    def test_errors_become_usage_error(self):
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["-s", "nope=1", "-s", "paginate_by=x"])
        self.assertIn("nope", str(caught.exception))
        self.assertIn("paginate_by", str(caught.exception))


class KintoCompatibilityTests(SynchronousTestCase):
    def test_kinto_dotted_names_accepted(self):
        path = write_ini(
            "[jsonsync]\n"
            "kinto.includes = kinto.plugins.default_bucket kinto.plugins.flush\n"
            "kinto.storage_backend = kinto.core.storage.memory\n"
            "kinto.permission_backend = kinto.core.permission.memory\n"
            "multiauth.policy.basicauth.use = kinto.core.authentication.BasicAuthAuthenticationPolicy\n"
        )
        self.addCleanup(os.unlink, path)
        settings, _ = configure(path, {}, {}, discover())
        self.assertEqual(settings["includes"], ["default_bucket", "flush"])
        self.assertEqual(settings["storage_backend"], "memory")
        self.assertEqual(settings["permission_backend"], "memory")
