"""
jsonsync's Twisted dropin: the C{twist jsonsync} service maker and the
built-in backends, authentication policies and plugins. Nothing heavy is
imported here; each provider loads its module when it is activated.
"""

from twisted.application.service import ServiceMaker

from jsonsync._dropin import LazyBackend, LazyPlugin, LazyPolicy

jsonsync = ServiceMaker(
    "jsonsync",
    "jsonsync.tap",
    "JSON storage with sync and sharing (Kinto HTTP API v1)",
    "jsonsync",
)

memory_backend = LazyBackend("memory", "jsonsync.storage.memory:MemoryBackend")
postgresql_backend = LazyBackend("postgresql", "jsonsync.storage.postgresql:PostgresBackend")

basicauth_policy = LazyPolicy("basicauth", "jsonsync.auth:BasicAuthFactory")
account_policy = LazyPolicy("account", "jsonsync.plugins.accounts:AccountPolicyFactory")

default_bucket_plugin = LazyPlugin("default_bucket", "jsonsync.plugins.default_bucket:DefaultBucketPlugin")
history_plugin = LazyPlugin("history", "jsonsync.plugins.history:HistoryPlugin")
accounts_plugin = LazyPlugin("accounts", "jsonsync.plugins.accounts:AccountsPlugin")
schema_plugin = LazyPlugin("schema", "jsonsync.plugins.schema:SchemaPlugin")
flush_plugin = LazyPlugin("flush", "jsonsync.plugins.flush:FlushPlugin")
prometheus_plugin = LazyPlugin("prometheus", "jsonsync.plugins.prometheus:PrometheusPlugin")
attachment_plugin = LazyPlugin("attachment", "jsonsync.plugins.attachment:AttachmentPlugin")
tokens_policy = LazyPolicy("tokens", "jsonsync.plugins.tokens:TokenPolicyFactory")
tokens_plugin = LazyPlugin("tokens", "jsonsync.plugins.tokens:TokensPlugin")
audit_plugin = LazyPlugin("audit", "jsonsync.plugins.audit:AuditPlugin")
webhooks_plugin = LazyPlugin("webhooks", "jsonsync.plugins.webhooks:WebhooksPlugin")
live_plugin = LazyPlugin("live", "jsonsync.plugins.live:LivePlugin")
