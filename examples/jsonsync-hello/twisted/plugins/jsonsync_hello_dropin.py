# The dropin Twisted finds: keep it light, import the plugin's module only.
from jsonsync_hello import HelloPlugin

hello = HelloPlugin()
